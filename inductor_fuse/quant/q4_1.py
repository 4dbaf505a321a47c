"""Q4_1: 32-weight blocks, 4-bit quants, an fp16 scale and an fp16 min.

llama.cpp writes it into Q4_0 files made with an importance matrix (`ffn_down` in the first eighth
of the layers).

GGUF block (20 bytes): d fp16, m fp16, qs[16] (byte j: q[j] in the low nibble, q[j + 16] in the
high nibble, as Q4_0's).

Planes for a weight [N, K] (nb = K/32 blocks per row):
    qs uint8   [N, K/2]   each block's 16 qs bytes in GGUF order
    dm float16 [N, 2*nb]  per block: d, m (GGUF's first 4 bytes)

Dequantization (float32, this op order, as gguf.quants): w[i] = d * q[i] + m
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, join_nibbles, minmax_quantize, plane_table, register, split_nibbles

QK = 32


def min_codes(q: Tensor, dm: Tensor, n: int, k: int) -> Codes:
    """Codes of w = d q + m (Q4_1, Q5_1): q uint8 [N, nb, 32], dm float16 [N, 2 nb]. The offset is
    -m: d q - (-m) is d q + m, bit for bit."""
    dm = dm.view(n, k // QK, 2).to(torch.float32)
    return Codes(q.to(torch.int8).reshape(n, k), dm[..., 0].contiguous(), (-dm[..., 1]).contiguous())


class Q41Format(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK // 2), dm=(torch.float16, 2))
    code_group = QK
    code_offset = True

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 20]
        n = blocks.shape[0]
        return blocks[..., 4:20].reshape(n, -1), f16_field(blocks, 0, 2).reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, dm = planes
        nb = k // QK
        return torch.cat([dm.view(n, nb, 2).view(torch.uint8), qs.view(n, nb, 16)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, dm = planes
        return min_codes(split_nibbles(qs.view(n, k // QK, 16)), dm, n, k)

    # quantize_row_q4_1_ref (ggml-quants.c), see base.minmax_quantize
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        q, d, mn = minmax_quantize(w.reshape(n, k // QK, QK), 15)
        dm = torch.cat([d, mn], dim=-1).to(torch.float16)
        return join_nibbles(q).reshape(n, -1), dm.reshape(n, -1)


Q4_1 = register(Q41Format(name="q4_1", block_size=QK, ggml_type=GGMLQuantizationType.Q4_1, type_size=20))
