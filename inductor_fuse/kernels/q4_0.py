"""Q4_0 kernels: W4A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]   byte 16b + j: low nibble -> element j, high nibble -> element 16 + j
    d  f16   [N, K/32]
    w[n, 32b + i] = d * (nibble - 8)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, block32_row_dot, prefetch_when_batched, register_kernels, unit_scalars, unit_words

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block: its 16 qs bytes are 4 int32 words loaded as one 16-byte vector,
# so one thread owns a unit (its sums and its scale math need no shuffle). Word e holds elements
# 4e..4e+3 in its low nibbles and 16+4e..16+4e+3 in its high nibbles: they meet activation words
# e and 4 + e of the block. With x quantized per 32-group (xq, xd, xs32 = xd * sum(xq)):
#   out[m, n] += d * (xd * (dp4a(w & 0x0F0F0F0F, x_lo) + dp4a((w >> 4) & 0x0F0F0F0F, x_hi)) - 8 * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q4_0_load_units(wctx, u, umask):
    # -> w int32 [BN, BU, 4] (the units' 16 bytes); d f16 [BN, BU]
    qs_ptr, d_ptr, _, _, qs_row, d_row, _, _, _, _ = wctx
    return unit_words(qs_ptr, qs_row, u * 4, 4, umask), unit_scalars(d_ptr, d_row, u, umask)


@triton.jit
def _q4_0_decode(w, u, USE_ASM: tl.constexpr):
    qs, d = w
    return qs & 0x0F0F0F0F, (qs >> 4) & 0x0F0F0F0F, d.to(tl.float32), 8.0


@triton.jit
def q4_0_nibbles(qs_ptr, rows64, s, K):
    # qs uint8 [N, K/2] (Q4_0's and Q4_1's) -> the 4-bit codes of the 32-blocks s [S] of rows64 [BN], int32 [BN, S, 32]
    i = tl.arange(0, 32)
    qsb = (s * 16)[:, None] + (i % 16)[None, :]  # [S, 32]
    qs_u8 = qs_ptr.to(tl.pointer_type(tl.uint8))
    b = tl.load(qs_u8 + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + qsb[None, :, :]).to(tl.int32)
    return (b >> ((i // 16) * 4)[None, None, :]) & 0xF


@triton.jit
def _q4_0_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    q = q4_0_nibbles(p[0], rows64, s, K)
    d = tl.load(p[1] + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * (q - 8).to(tl.float32)  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

# The matvec default: not measured yet; Q4_K's policy on this kernel's tile of the same bytes per step.
(SPEC,) = register_kernels(
    KernelSpec("q4_0", UNIT.value, _q4_0_load_units, _q4_0_decode, block32_row_dot, _q4_0_dequant_tile,
               plane_dtypes=(torch.int32, None), default_config=prefetch_when_batched(2, 32, num_warps=1))
)  # fmt: skip
