"""Q4_0: 32-weight blocks, 4-bit quants, one fp16 scale, no min.

GGUF block (18 bytes): d fp16, qs[16] (byte j: q[j] in the low nibble, q[j + 16] in the high
nibble).

Planes for a weight [N, K] (nb = K/32 blocks per row):
    qs uint8 [N, K/2]   each block's 16 qs bytes in GGUF order
    d  float16 [N, nb]

The kernels read qs as int32 words: word e of a block holds elements 4e..4e+3 in its low nibbles
and 16+4e..16+4e+3 in its high nibbles, so both nibble halves meet contiguous activation words.

Dequantization (float32): w[i] = d * (q[i] - 8)
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, absmax_quantize, f16_field, join_nibbles, plane_table, register, split_nibbles

QK = 32


class Q40Format(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK // 2), d=(torch.float16, 1))
    code_group = QK

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 18]
        n = blocks.shape[0]
        d = f16_field(blocks, 0)
        return blocks[..., 2:18].reshape(n, -1), d.reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, d = planes
        nb = k // QK
        return torch.cat([d.view(n, nb, 1).view(torch.uint8), qs.view(n, nb, 16)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, d = planes
        q = split_nibbles(qs.view(n, k // QK, 16)).to(torch.int8) - 8  # [N, nb, 32]
        return Codes(q.reshape(n, k), d.to(torch.float32), None)

    # quantize_row_q4_0_ref (ggml-quants.c), see base.absmax_quantize
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        q, d = absmax_quantize(w.reshape(n, k // QK, QK), 8)  # [N, nb, 32], [N, nb, 1]
        return join_nibbles(q).reshape(n, -1), d.to(torch.float16).reshape(n, -1)


Q4_0 = register(Q40Format(name="q4_0", block_size=QK, ggml_type=GGMLQuantizationType.Q4_0, type_size=18))
