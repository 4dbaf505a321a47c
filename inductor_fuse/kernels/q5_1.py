"""Q5_1 kernels: W5A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]    qh uint8 [N, K/8]   as Q5_0's
    dm f16   [N, K/16]   d at 2b, m at 2b + 1
    w[n, 32b + i] = d * (nibble | bit << 4) + m
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    KernelSpec,
    MatvecConfig,
    block32_min_row_dot,
    f16_pair,
    register_kernels,
    unit_scalars,
    unit_words,
)
from .q4_1 import min_weights
from .q5_0 import q5_0_codes, q5_0_tile_codes

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block: Q5_0's 4 qs words + 1 qh word, decoded as Q5_0's (q5_0_codes), and
# its (d, m) as one int32 word:
#   out[m, n] += d * xd * (dp4a(q_lo, x_lo) + dp4a(q_hi, x_hi)) + m * xs32
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q5_1_load_units(wctx, u, umask):
    # -> q_lo, q_hi int32 [BN, BU, 4] (5-bit codes, bytes); dm int32 [BN, BU] (d, m as two float16)
    qs_ptr, qh_ptr, dm_ptr, _, qs_row, qh_row, dm_row, _, _, _ = wctx
    q_lo, q_hi = q5_0_codes(unit_words(qs_ptr, qs_row, u * 4, 4, umask), unit_scalars(qh_ptr, qh_row, u, umask))
    return q_lo, q_hi, unit_scalars(dm_ptr, dm_row, u, umask)


@triton.jit
def _q5_1_decode(w, u, USE_ASM: tl.constexpr):
    q_lo, q_hi, dm = w
    d, m = f16_pair(dm)
    return q_lo, q_hi, d, m


@triton.jit
def _q5_1_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    return min_weights(q5_0_tile_codes(p[0], p[1], rows64, s, K), p[2], rows, s, K)  # [BN, BK // 32, 32]


# The matvec default: Q5_0's, not measured for Q5_1.
(SPEC,) = register_kernels(
    KernelSpec(
        "q5_1", UNIT.value, _q5_1_load_units, _q5_1_decode, block32_min_row_dot, _q5_1_dequant_tile,
        plane_dtypes=(torch.int32, torch.int32, torch.int32),
        default_config=MatvecConfig(block_n=2, block_u=32, num_warps=2),
    )
)  # fmt: skip
