"""Q5_K: Q4_K with a fifth bit. 256-weight super-blocks of 8 sub-blocks of 32, 5-bit quants with a
6-bit scale and min each.

llama.cpp writes it for Q5_K_S / Q5_K_M files, and inside int4 files too: Q4_K_S's attn_v in the
first 4 layers and ffn_down in the first 1/8 of the layers, IQ4_XS's attn_v when 4 or more query
heads share a KV head, a 70B's attn_v in Q4_K_M.

GGUF block (176 bytes): d fp16, dmin fp16, scales[12] (packed as Q4_K's), qh[32], qs[128]. qs as
Q4_K's (byte 32*g + l: sub-block 2g element l in the low nibble, sub-block 2g+1 element l in the
high nibble); bit j of qh byte l is the fifth bit of sub-block j element l.

Planes for a weight [N, K] (nb = K/256 blocks per row), Q4_K's three and then qh:
    qs  uint8   [N, K/2]   each block's 128 qs bytes in GGUF order
    sm  uint8   [N, K/16]  per sub-block j: sc_j, m_j (6-bit, unpacked), interleaved sc0, m0, sc1, ...
    dm  float16 [N, 2*nb]  per block: d, dmin
    qh  uint8   [N, K/8]   each block's 32 qh bytes in GGUF order

Dequantization (float32, this op order, as gguf.quants / ggml):
    w[j, l] = (d * sc_j) * (nibble + 16 * bit_j(qh[l])) - (dmin * m_j)
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, plane_table, register
from .q4_k import QK_K, kquant_codes, kquant_head, kquant_head_bytes, pack_nibbles, quantize_scale_min, unpack_nibbles


def _high_bits(qh: Tensor) -> Tensor:
    # qh: uint8 [..., 32] -> uint8 [..., 8, 32]: bit j of byte l -> [j, l]
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return (qh[..., None, :] >> shifts[:, None]) & 1


def _pack_high_bits(h: Tensor) -> Tensor:
    # h: uint8 [..., 8, 32] in {0, 1} -> uint8 [..., 32]; inverse of _high_bits
    shifts = torch.arange(8, dtype=torch.uint8, device=h.device)
    return (h << shifts[:, None]).sum(-2, dtype=torch.uint8)


class Q5KFormat(WeightFormat):
    plane_specs = plane_table(
        qs=(torch.uint8, QK_K // 2), sm=(torch.uint8, 16), dm=(torch.float16, 2), qh=(torch.uint8, QK_K // 8)
    )
    code_group = 32
    code_offset = True

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 176]
        n = blocks.shape[0]
        sm, dm = kquant_head(blocks)
        return blocks[..., 48:].reshape(n, -1), sm, dm, blocks[..., 16:48].reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, sm, dm, qh = planes
        nb = k // QK_K
        return torch.cat([kquant_head_bytes(sm, dm, n, nb), qh.view(n, nb, 32), qs.view(n, nb, QK_K // 2)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, sm, dm, qh = planes
        nb = k // QK_K
        q = unpack_nibbles(qs.view(n, nb, QK_K // 2)) | (_high_bits(qh.view(n, nb, 32)) << 4)  # [N, nb, 8, 32]
        return kquant_codes(q, sm, dm, n, k)

    # quantize_row_q5_K_ref (ggml-quants.c): Q4_K's search with nmax = 31, rmin = -0.5, 15 steps
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        L, sm, dm = quantize_scale_min(w, nmax=31, rmin=-0.5, nstep=15)  # L [R, 8, 32] < 32
        qs = pack_nibbles(L & 0xF)
        qh = _pack_high_bits(L >> 4)
        return qs.reshape(n, -1), sm.reshape(n, -1), dm.reshape(n, -1), qh.reshape(n, -1)


Q5_K = register(Q5KFormat(name="q5_k", block_size=QK_K, ggml_type=GGMLQuantizationType.Q5_K, type_size=176))
