"""Q8_0 kernels: W8A8 decode matvec (signed dp4a) and the weight tile dequantizer for the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0:
    qs int8 [N, K]      d f16 [N, K/32]      w[n, k] = d[n, k // 32] * qs[n, k]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, MatvecConfig, _dp4a, register_kernels, unit_scalars, unit_words, x_scales, x_words

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block of 32: 8 int32 words of 4 signed weights.
#   out[m, n] += d * xd * sum_t dp4a_s8(w_t, x_t)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q8_0_load_units(wctx, u, umask):
    # -> qs int32 [BN, BU, 8]; d f32 [BN, BU]
    qs_ptr, d_ptr, _, _, qs_row, d_row, _, _, _, _ = wctx
    return unit_words(qs_ptr, qs_row, u * 8, 8, umask), unit_scalars(d_ptr, d_row, u, umask).to(tl.float32)


@triton.jit
def _q8_0_decode(w, u, USE_ASM: tl.constexpr):
    return w  # the weights are int8 already


@triton.jit
def _q8_0_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    qs, d = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    s = tl.sum(_dp4a(qs, x_words(xq_ptr, m, K, u * 8, umask, qs), True, USE_ASM), axis=2)
    return d * (x_scales(xd_ptr, m, K // 32, u, umask)[None, :] * s.to(tl.float32))


@triton.jit
def _q8_0_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    qs_ptr, d_ptr = p[0], p[1]
    i = tl.arange(0, 32)
    q = tl.load(qs_ptr + tl.multiple_of(rows64 * K, 32)[:, None, None] + (s * 32)[None, :, None] + i[None, None, :]).to(
        tl.float32
    )
    d = tl.load(d_ptr + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * q  # [BN, BK // 32, 32]


(SPEC,) = register_kernels(
    KernelSpec(
        "q8_0", UNIT.value, _q8_0_load_units, _q8_0_decode, _q8_0_row_dot, _q8_0_dequant_tile,
        plane_dtypes=(torch.int32, None),
        default_config=MatvecConfig(block_n=2, block_u=16, num_warps=2),
    )
)  # fmt: skip
