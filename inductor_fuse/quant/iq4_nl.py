"""IQ4_NL: 32-weight blocks of 4-bit codes into IQ4_XS's non-linear grid, one fp16 scale.

llama.cpp writes it in place of IQ4_XS for a tensor whose rows are not a multiple of 256 weights
(and as a file type of its own).

GGUF block (18 bytes): d fp16, qs[16] (byte j: code j in the low nibble, code 16 + j in the high
nibble).

Planes for a weight [N, K] (nb = K/32 blocks per row):
    qs uint8   [N, K/2]  16 bytes per block in IQ4_XS's kernel order (quant/iq4_xs.py: int32 word t
                         holds codes 4t..4t+3 in nibbles 0-3 and 16+4t..16+4t+3 in nibbles 4-7; a
                         permutation of GGUF's bytes, restored by to_gguf_bytes)
    d  float16 [N, nb]

Dequantization (float32, as gguf.quants): w[32b + i] = d_b * KVALUES[q[32b + i]]
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, join_nibbles, plane_table, register, split_nibbles
from .iq4_xs import KVALUES, best_index, block_scales, grid_values, kernel_codes, kernel_pack

QK = 32


class IQ4NLFormat(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK // 2), d=(torch.float16, 1))
    code_group = QK

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 18]
        n = blocks.shape[0]
        return kernel_pack(split_nibbles(blocks[..., 2:18])).reshape(n, -1), f16_field(blocks, 0).reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, d = planes
        nb = k // QK
        qs = join_nibbles(kernel_codes(qs.view(n, nb, 16)))
        return torch.cat([d.view(n, nb, 1).view(torch.uint8), qs], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, d = planes
        return Codes(grid_values(qs.view(n, k // QK, 16)).reshape(n, k), d.to(torch.float32), None)

    # quantize_iq4_nl without importance weights: quantize_row_iq4_nl_impl with one 32-block per
    # super-block (ggml-quants.c): the scale search of iq4_xs.block_scales, d = fp16(scale), codes
    # = best_index(x / scale) with the float32 scale (0 when the scale is 0).
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        kv = torch.tensor(KVALUES, dtype=torch.float32, device=w.device)
        x = w.reshape(n, k // QK, QK)
        scale = block_scales(x, kv)[..., None]  # [N, nb, 1]
        inv = torch.where(scale != 0, 1 / scale, torch.zeros_like(scale))
        codes = best_index(inv * x, kv).to(torch.uint8)
        return kernel_pack(codes).reshape(n, -1), scale.to(torch.float16).reshape(n, -1)


IQ4_NL = register(IQ4NLFormat(name="iq4_nl", block_size=QK, ggml_type=GGMLQuantizationType.IQ4_NL, type_size=18))
