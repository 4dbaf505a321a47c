"""Q8_0 kernels: W8A8 decode matvec (signed dp4a) and the weight tile dequantizer for the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0:
    qs int8 [N, K]      d f16 [N, K/32]      w[n, k] = d[n, k // 32] * qs[n, k]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block of 32: 8 int32 words of 4 signed weights.
#   out[m, n] += d * xd * sum_t dp4a_s8(w_t, x_t)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q8_0_load_units(wctx, u, umask):
    # -> qs int32 [BN, BU, 8]; d f32 [BN, BU]
    qs_ptr, d_ptr, w_row, rows_c, rs1, t = wctx
    qs = tl.load(
        qs_ptr + w_row[:, None, None] + u[None, :, None] * 8 + t[None, None, :], mask=umask[None, :, None], other=0
    )
    d = tl.load(d_ptr + rows_c[:, None] * rs1 + u[None, :], mask=umask[None, :], other=0.0).to(tl.float32)
    return qs, d


@triton.jit
def _q8_0_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    qs, d = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    t = tl.arange(0, 8)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        x = tl.load(
            tl.broadcast_to(
                (xq_ptr + tl.multiple_of(m * (K // 4), 8) + u[:, None] * 8 + t[None, :])[None, :, :], qs.shape
            ),
            mask=tl.broadcast_to(umask[None, :, None], qs.shape),
            other=0,
        )
        s = tl.sum(_dp4a(qs, x, True, USE_ASM), axis=2)
        xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        part = d * (xd[None, :] * s.to(tl.float32))
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _q8_0_weight_ctx(
    qs_ptr,
    d_ptr,
    unused0_ptr,
    unused1_ptr,  # qs int32 [N, K/4]; d f16 [N, K/32]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _q8_0_load_units (matvec_kernel builds it once, before the K loop)
    return (qs_ptr, d_ptr, rows_c.to(tl.int64) * rs0, rows_c, rs1, tl.arange(0, 8))


@triton.jit
def _q8_0_dequant_tile(
    qs_ptr,
    d_ptr,
    unused0_ptr,
    unused1_ptr,
    rows,
    k0,
    K,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # float32 [BN, BK]
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    i = tl.arange(0, 32)
    rows64 = rows.to(tl.int64)
    q = tl.load(qs_ptr + tl.multiple_of(rows64 * K, 32)[:, None, None] + (s * 32)[None, :, None] + i[None, None, :]).to(
        tl.float32
    )
    d = tl.load(d_ptr + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * q  # [BN, BK // 32, 32]


MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=16, num_warps=2),
    MatvecConfig(block_n=2, block_u=32, num_warps=4),
    MatvecConfig(block_n=4, block_u=16, num_warps=4),
    MatvecConfig(block_n=1, block_u=16, num_warps=1),
)


def plane_views(planes):
    qs, d = planes
    return (qs.view(torch.int32), d)


(SPEC,) = register_kernels(
    KernelSpec(
        fmt="q8_0",
        weight_ctx=_q8_0_weight_ctx,
        load_units=_q8_0_load_units,
        units_dot=_q8_0_units_dot,
        unit=UNIT.value,
        plane_views=plane_views,
        dequant_tile=_q8_0_dequant_tile,
        matvec_configs=MATVEC_CONFIGS,
        matvec_max_m=8,
        fused_gemm_max_m=64,
    )
)
