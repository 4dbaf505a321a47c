"""Q5_0: 32-weight blocks, 5-bit quants, one fp16 scale, no min.

GGUF block (22 bytes): d fp16, qh[4] (bit i of the little-endian uint32 = bit 4 of q[i]),
qs[16] (byte j: q[j] low 4 bits in the low nibble, q[j + 16] low 4 bits in the high nibble).

Planes for a weight [N, K] (nb = K/32 blocks per row):
    qs uint8 [N, K/2], qh uint8 [N, K/8] (GGUF's 4 bytes per block), d float16 [N, nb]

Dequantization (float32): w[i] = d * (q[i] - 16)
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, absmax_quantize, f16_field, join_nibbles, plane_table, register, split_nibbles

QK = 32


def bits(qh: Tensor) -> Tensor:
    # qh: uint8 [..., 4] -> uint8 [..., 32], element i = bit i of the little-endian uint32
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh[..., None] >> shifts) & 1).flatten(-2)


def pack_bits(b: Tensor) -> Tensor:
    # b: uint8 [..., 32] in {0, 1} -> uint8 [..., 4]; inverse of bits
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
    return (b.unflatten(-1, (4, 8)) << shifts).sum(-1, dtype=torch.uint8)


class Q50Format(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK // 2), qh=(torch.uint8, 4), d=(torch.float16, 1))
    code_group = QK

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 22]
        n = blocks.shape[0]
        d = f16_field(blocks, 0)
        return blocks[..., 6:22].reshape(n, -1), blocks[..., 2:6].reshape(n, -1), d.reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, qh, d = planes
        nb = k // QK
        return torch.cat([d.view(n, nb, 1).view(torch.uint8), qh.view(n, nb, 4), qs.view(n, nb, 16)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, qh, d = planes
        nb = k // QK
        q = split_nibbles(qs.view(n, nb, 16)) | (bits(qh.view(n, nb, 4)) << 4)  # [N, nb, 32]
        return Codes((q.to(torch.int8) - 16).reshape(n, k), d.to(torch.float32), None)

    # quantize_row_q5_0_ref (ggml-quants.c), see base.absmax_quantize
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        q, d = absmax_quantize(w.reshape(n, k // QK, QK), 16)  # [N, nb, 32], [N, nb, 1]
        qs = join_nibbles(q & 0xF)
        qh = pack_bits(q >> 4)
        return qs.reshape(n, -1), qh.reshape(n, -1), d.to(torch.float16).reshape(n, -1)


Q5_0 = register(Q50Format(name="q5_0", block_size=QK, ggml_type=GGMLQuantizationType.Q5_0, type_size=22))
