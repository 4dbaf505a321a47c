"""Q4_1 kernels: W4A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]    as Q4_0's: byte 16b + j: low nibble -> element j, high nibble -> element 16 + j
    dm f16   [N, K/16]   d at 2b, m at 2b + 1
    w[n, 32b + i] = d * nibble + m
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    KernelSpec,
    block32_min_row_dot,
    f16_pair,
    prefetch_when_batched,
    register_kernels,
    unit_scalars,
    unit_words,
)
from .q4_0 import q4_0_nibbles

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block, Q4_0's 16 qs bytes (4 int32 words, one 16-byte load) and its (d, m)
# as one int32 word. With x quantized per 32-group (xq, xd, xs32 = xd * sum(xq)):
#   out[m, n] += d * xd * (dp4a(w & 0x0F0F0F0F, x_lo) + dp4a((w >> 4) & 0x0F0F0F0F, x_hi)) + m * xs32
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q4_1_load_units(wctx, u, umask):
    # -> w int32 [BN, BU, 4] (the units' 16 bytes); dm int32 [BN, BU] (d, m as two float16)
    qs_ptr, dm_ptr, _, _, qs_row, dm_row, _, _, _, _ = wctx
    return unit_words(qs_ptr, qs_row, u * 4, 4, umask), unit_scalars(dm_ptr, dm_row, u, umask)


@triton.jit
def _q4_1_decode(w, u, USE_ASM: tl.constexpr):
    qs, dm = w
    d, m = f16_pair(dm)
    return qs & 0x0F0F0F0F, (qs >> 4) & 0x0F0F0F0F, d, m


@triton.jit
def min_weights(q, dm_ptr, rows, s, K):
    # codes q int32 [BN, S, 32] of the 32-blocks s -> float32 d * q + m (Q4_1's and Q5_1's dm f16 [N, K/16])
    d = tl.load(dm_ptr + rows[:, None] * (K // 16) + (2 * s)[None, :]).to(tl.float32)
    m = tl.load(dm_ptr + rows[:, None] * (K // 16) + (2 * s + 1)[None, :]).to(tl.float32)
    return d[:, :, None] * q.to(tl.float32) + m[:, :, None]


@triton.jit
def _q4_1_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    return min_weights(q4_0_nibbles(p[0], rows64, s, K), p[1], rows, s, K)  # [BN, BK // 32, 32]


# The matvec default: Q4_0's (same bytes per step but 2 more per block), not measured for Q4_1.
(SPEC,) = register_kernels(
    KernelSpec("q4_1", UNIT.value, _q4_1_load_units, _q4_1_decode, block32_min_row_dot, _q4_1_dequant_tile,
               plane_dtypes=(torch.int32, torch.int32), default_config=prefetch_when_batched(2, 32, num_warps=1))
)  # fmt: skip
