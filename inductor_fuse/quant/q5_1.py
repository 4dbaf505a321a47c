"""Q5_1: 32-weight blocks, 5-bit quants, an fp16 scale and an fp16 min.

llama.cpp writes it in place of Q5_K for a tensor whose rows are not a multiple of 256 weights,
and into Q5_0 files made with an importance matrix (`ffn_down` in the first eighth of the layers).

GGUF block (24 bytes): d fp16, m fp16, qh[4] (bit i of the little-endian uint32 = bit 4 of q[i]),
qs[16] (as Q5_0's).

Planes for a weight [N, K] (nb = K/32 blocks per row):
    qs uint8   [N, K/2]   qh uint8 [N, K/8] (GGUF's 4 bytes per block)   dm float16 [N, 2*nb] (d, m)

Dequantization (float32, this op order, as gguf.quants): w[i] = d * q[i] + m
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, join_nibbles, minmax_quantize, plane_table, register, split_nibbles
from .q4_1 import QK, min_codes
from .q5_0 import bits, pack_bits


class Q51Format(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK // 2), qh=(torch.uint8, 4), dm=(torch.float16, 2))
    code_group = QK
    code_offset = True

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 24]
        n = blocks.shape[0]
        return blocks[..., 8:24].reshape(n, -1), blocks[..., 4:8].reshape(n, -1), f16_field(blocks, 0, 2).reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, qh, dm = planes
        nb = k // QK
        return torch.cat([dm.view(n, nb, 2).view(torch.uint8), qh.view(n, nb, 4), qs.view(n, nb, 16)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, qh, dm = planes
        nb = k // QK
        q = split_nibbles(qs.view(n, nb, 16)) | (bits(qh.view(n, nb, 4)) << 4)  # [N, nb, 32]
        return min_codes(q, dm, n, k)

    # quantize_row_q5_1_ref (ggml-quants.c), see base.minmax_quantize
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        q, d, mn = minmax_quantize(w.reshape(n, k // QK, QK), 31)
        dm = torch.cat([d, mn], dim=-1).to(torch.float16)
        return join_nibbles(q & 0xF).reshape(n, -1), pack_bits(q >> 4).reshape(n, -1), dm.reshape(n, -1)


Q5_1 = register(Q51Format(name="q5_1", block_size=QK, ggml_type=GGMLQuantizationType.Q5_1, type_size=24))
