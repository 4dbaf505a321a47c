"""Q5_K kernels: W5A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Q4_K's kernels with a fifth bit (quant/q5_k.py). Planes (docs/design.md contract), weight [N, K],
K % 256 == 0:
    qs uint8 [N, K/2]    as Q4_K's: block b, chunk j (0..3), byte l (0..31) at 128b + 32j + l:
                         low nibble = sub-block 2j element l, high nibble = sub-block 2j+1 element l
    sm uint8 [N, K/16]   as Q4_K's: sub-block s of block b: sc at 16b + 2s, m at 16b + 2s + 1
    dm f16   [N, K/128]  as Q4_K's: block b: d at 2b, dmin at 2b + 1
    qh uint8 [N, K/8]    block b, byte l at 32b + l: bit s = fifth bit of sub-block s element l
    w[n, 256b + 32s + l] = d*sc_s * (nibble + 16 * bit) - dmin*m_s
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, prefetch_when_batched, register_kernels, unit_halves, unit_scalars
from .q4_k import kquant_weights, q4k_decode, q4k_nibbles, q4k_row_dot

UNIT = tl.constexpr(64)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is Q4_K's: one 64-wide chunk u = 4b + j of K, 32 qs bytes whose low nibbles are
# sub-block 2j and high nibbles sub-block 2j+1; word t holds elements 4t..4t+3 of both. Their fifth
# bits are bits 2j and 2j+1 of the block's qh word t (bytes 4t..4t+3), moved to bit 4 of each byte:
#   q_lo(t) = (qs_t & 0x0F0F0F0F) | (((qh_t >> 2j) & 0x01010101) << 4)
#   q_hi(t) = ((qs_t >> 4) & 0x0F0F0F0F) | (((qh_t >> (2j + 1)) & 0x01010101) << 4)
# Every byte is then a code in 0..31, and Q4_K's row dot (dp4a over the sub-block, scale and min
# once per 32 weights) applies as it is. The four units of a block read its 32 qh bytes each (the
# same line: one DRAM read, cached).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q5k_load_units(wctx, u, umask):
    # -> wa, wb int32 [BN, BU, 4]: the unit's qs words 0-3, 4-7; ha, hb: its block's qh words 0-3,
    #    4-7; smw int32 [BN, BU] (sc_lo, m_lo, sc_hi, m_hi); d, dmin f16 [BN, BU]
    qs_ptr, sm_ptr, dm_ptr, qh_ptr, qs_row, sm_row, dm_row, qh_row, _, _ = wctx
    wa, wb = unit_halves(qs_ptr, qs_row, u, umask)
    ha, hb = unit_halves(qh_ptr, qh_row, u // 4, umask)
    smw = unit_scalars(sm_ptr, sm_row, u, umask)
    d = unit_scalars(dm_ptr, dm_row, (u // 4) * 2, umask)
    dmin = unit_scalars(dm_ptr, dm_row, (u // 4) * 2, umask, 1)
    return wa, wb, ha, hb, smw, d, dmin


@triton.jit
def _q5k_decode(w, u, USE_ASM: tl.constexpr):
    # -> Q4_K's decode (q4k_decode) with the fifth bits added to the four code planes
    wa, wb, ha, hb, smw, d, dmin = w
    a_lo, a_hi, b_lo, b_hi, dsc_lo, dm_lo, dsc_hi, dm_hi = q4k_decode((wa, wb, smw, d, dmin), u, USE_ASM)
    sh = (2 * (u % 4))[None, :, None]
    return (
        a_lo | (((ha >> sh) & 0x01010101) << 4),
        a_hi | (((ha >> (sh + 1)) & 0x01010101) << 4),
        b_lo | (((hb >> sh) & 0x01010101) << 4),
        b_hi | (((hb >> (sh + 1)) & 0x01010101) << 4),
        dsc_lo,
        dm_lo,
        dsc_hi,
        dm_hi,
    )


@triton.jit
def _q5k_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    # p: qs uint8 [N, K/2]; sm uint8 [N, K/16]; dm f16 [N, K/128]; qh uint8 [N, K/8] -> f32 [BN, S, 32]
    l = tl.arange(0, 32)
    hbyte = ((s // 8) * 32)[:, None] + l[None, :]  # [S, 32]
    h = tl.load(p[3] + tl.multiple_of(rows64 * (K // 8), 16)[:, None, None] + hbyte[None, :, :]).to(tl.int32)
    q = q4k_nibbles(p[0], rows64, s, K) | (((h >> (s % 8)[None, :, None]) & 1) << 4)
    return kquant_weights(q, p[1], p[2], rows, s, K)


# The matvec default: Q4_K's (same loop, 32 qh bytes more per 144), not measured for Q5_K.
(SPEC,) = register_kernels(
    KernelSpec("q5_k", UNIT.value, _q5k_load_units, _q5k_decode, q4k_row_dot, _q5k_dequant_tile,
               plane_dtypes=(torch.int32, torch.int32, None, torch.int32),
               default_config=prefetch_when_batched(2, 16, num_warps=1), matvec_max_m=4)
)  # fmt: skip
