"""Q8_0: 32-weight blocks, int8 quants, one fp16 scale.

GGUF block (34 bytes): d fp16, qs[32] int8.

Planes for a weight [N, K]: qs int8 [N, K], d float16 [N, K/32]

Dequantization (float32): w[i] = q[i] * d
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, plane_table, register

QK = 32


def _round_half_away(v: Tensor) -> Tensor:
    # C roundf: halves away from zero (torch.round goes to even). Exact: |v| - floor|v| is exact.
    a = v.abs()
    f = torch.floor(a)
    return torch.sign(v) * (f + torch.floor(2 * (a - f)))


class Q80Format(WeightFormat):
    plane_specs = plane_table(qs=(torch.int8, QK), d=(torch.float16, 1))
    code_group = QK
    codes_plane = 0

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 34]
        n = blocks.shape[0]
        d = f16_field(blocks, 0)
        qs = blocks[..., 2:].contiguous().view(torch.int8)
        return qs.reshape(n, -1), d.reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, d = planes
        nb = k // QK
        return torch.cat([d.view(n, nb, 1).view(torch.uint8), qs.view(n, nb, QK).view(torch.uint8)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, d = planes
        return Codes(qs, d.to(torch.float32), None)

    # quantize_row_q8_0_ref (ggml-quants.c):
    #   d = absmax / 127, id = 1/d (0 if d == 0), q = roundf(x id)
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        nb = k // QK
        x = w.reshape(n, nb, QK)
        d = x.abs().amax(-1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
        q = _round_half_away(x * inv).to(torch.int8)
        return q.reshape(n, k), d.to(torch.float16).reshape(n, -1)


Q8_0 = register(Q80Format(name="q8_0", block_size=QK, ggml_type=GGMLQuantizationType.Q8_0, type_size=34))
