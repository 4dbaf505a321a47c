"""Q5_0 kernels: W5A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]   byte 16b + j: low nibble -> element j, high nibble -> element 16 + j
    qh uint8 [N, K/8]   4 little-endian bytes per block: bit i = 5th bit of element i
    d  f16   [N, K/32]
    w[n, 32b + i] = d * ((nibble | bit << 4) - 16)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, MatvecConfig, block32_row_dot, register_kernels, unit_scalars, unit_words

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block: 4 qs words + 1 qh word (the block's 32 bits). qs word e holds
# elements 4e..4e+3 (low nibbles) and 16+4e.. (high nibbles); their 5th bits are qh bits 4e..4e+3
# and 16+4e.., spread to bit 4 of each byte by the multiply trick
#   spread(b4) = ((b4 * 0x00204081) & 0x01010101) << 4       (b4 = 4 bits)
#   out[m, n] += d * (xd * (dp4a(q_lo, x_lo) + dp4a(q_hi, x_hi)) - 16 * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def q5_0_codes(qs, qh):
    # a block's qs words [BN, BU, 4] and qh word [BN, BU] (Q5_0's and Q5_1's) -> q_lo, q_hi int32
    # [BN, BU, 4]: the 5-bit codes (bytes) of its elements 4e..4e+3 and 16+4e..
    qh = qh[:, :, None]
    sh = (4 * tl.arange(0, 4))[None, None, :]
    h_lo = ((((qh >> sh) & 0xF) * 0x00204081) & 0x01010101) << 4
    h_hi = ((((qh >> (sh + 16)) & 0xF) * 0x00204081) & 0x01010101) << 4
    return (qs & 0x0F0F0F0F) | h_lo, ((qs >> 4) & 0x0F0F0F0F) | h_hi


@triton.jit
def _q5_0_load_units(wctx, u, umask):
    # -> q_lo, q_hi int32 [BN, BU, 4]: the 5-bit weights (bytes) of each block's elements 4e..4e+3
    #    and 16+4e..; d f32 [BN, BU] (decoded here, as measured: the prefetch holds these)
    qs_ptr, qh_ptr, d_ptr, _, qs_row, qh_row, d_row, _, _, _ = wctx
    q_lo, q_hi = q5_0_codes(unit_words(qs_ptr, qs_row, u * 4, 4, umask), unit_scalars(qh_ptr, qh_row, u, umask))
    return q_lo, q_hi, unit_scalars(d_ptr, d_row, u, umask).to(tl.float32)


@triton.jit
def _q5_0_decode(w, u, USE_ASM: tl.constexpr):
    q_lo, q_hi, d = w  # decoded by _q5_0_load_units
    return q_lo, q_hi, d, 16.0


@triton.jit
def q5_0_tile_codes(qs_ptr, qh_ptr, rows64, s, K):
    # qs uint8 [N, K/2], qh uint8 [N, K/8] (Q5_0's and Q5_1's) -> the 5-bit codes of the 32-blocks s, int32 [BN, S, 32]
    i = tl.arange(0, 32)
    qsb = (s * 16)[:, None] + (i % 16)[None, :]
    qhb = (s * 4)[:, None] + (i // 8)[None, :]
    lo = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + qsb[None, :, :]).to(tl.int32)
    hb = tl.load(qh_ptr + rows64[:, None, None] * (K // 8) + qhb[None, :, :]).to(tl.int32)
    return ((lo >> ((i // 16) * 4)[None, None, :]) & 0xF) | (((hb >> (i % 8)[None, None, :]) & 1) << 4)


@triton.jit
def _q5_0_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    q = q5_0_tile_codes(p[0], p[1], rows64, s, K)
    d = tl.load(p[2] + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * (q - 16).to(tl.float32)  # [BN, BK // 32, 32]


(SPEC,) = register_kernels(
    KernelSpec(
        "q5_0", UNIT.value, _q5_0_load_units, _q5_0_decode, block32_row_dot, _q5_0_dequant_tile,
        plane_dtypes=(torch.int32, torch.int32, None),
        default_config=MatvecConfig(block_n=2, block_u=32, num_warps=2),
    )
)  # fmt: skip
