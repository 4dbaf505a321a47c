"""Q8_0 kernels: W8A8 decode matvec (signed dp4a) and the weight tile dequantizer for the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0:
    qs int8 [N, K]      d f16 [N, K/32]      w[n, k] = d[n, k // 32] * qs[n, k]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MatvecConfig, _dp4a, _matvec_epilogue, act_quant, launch_matvec

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block of 32: 8 int32 words of 4 signed weights.
#   out[m, n] += d * xd * sum_t dp4a_s8(w_t, x_t)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q8_0_matvec_kernel(
    xq_ptr,
    xd_ptr,
    xs32_ptr,
    xs16_ptr,  # xq int32 [M, K/4]; xd f32 [M, K/32]
    qs_ptr,
    d_ptr,
    unused0_ptr,
    unused1_ptr,  # qs int32 [N, K/4]; d f16 [N, K/32]
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    UNITS_PER_SPLIT,
    rs0,
    rs1,
    rs2,
    rs3,  # rs_i: row strides of the planes
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_c = tl.minimum(rows, N - 1)
    n_units = K // 32
    u_lo = pid_k * UNITS_PER_SPLIT
    u_hi = tl.minimum(u_lo + UNITS_PER_SPLIT, n_units)
    ub = tl.arange(0, BLOCK_U)
    t = tl.arange(0, 8)
    acc0 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc6 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc7 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    w_row = rows_c.to(tl.int64) * rs0
    for u0 in range(u_lo, u_hi, BLOCK_U):
        u = u0 + ub
        umask = u < u_hi
        w = tl.load(
            qs_ptr + w_row[:, None, None] + u[None, :, None] * 8 + t[None, None, :], mask=umask[None, :, None], other=0
        )  # [BN, BU, 8]
        d = tl.load(d_ptr + rows_c[:, None] * rs1 + u[None, :], mask=umask[None, :], other=0.0).to(tl.float32)
        for mi in tl.static_range(BLOCK_M):
            m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
            x = tl.load(
                tl.broadcast_to(
                    (xq_ptr + tl.multiple_of(m * (K // 4), 8) + u[:, None] * 8 + t[None, :])[None, :, :], w.shape
                ),
                mask=tl.broadcast_to(umask[None, :, None], w.shape),
                other=0,
            )
            s = tl.sum(_dp4a(w, x, True, USE_ASM), axis=2)
            xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
            part = d * (xd[None, :] * s.to(tl.float32))
            if mi == 0:
                acc0 += part
            if mi == 1:
                acc1 += part
            if mi == 2:
                acc2 += part
            if mi == 3:
                acc3 += part
            if mi == 4:
                acc4 += part
            if mi == 5:
                acc5 += part
            if mi == 6:
                acc6 += part
            if mi == 7:
                acc7 += part
    _matvec_epilogue(
        acc0,
        acc1,
        acc2,
        acc3,
        acc4,
        acc5,
        acc6,
        acc7,
        bias_ptr,
        out_ptr,
        pid_m,
        pid_k,
        rows,
        M,
        N,
        HAS_BIAS,
        SPLIT,
        BLOCK_M,
        BLOCK_N,
    )


@triton.jit
def _q8_0_dequant_tile(
    qs_ptr, d_ptr, unused0_ptr, unused1_ptr, rows, k0, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
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


MATVEC_CONFIGS = [  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=16, num_warps=2),
    MatvecConfig(block_n=2, block_u=32, num_warps=4),
    MatvecConfig(block_n=4, block_u=16, num_warps=4),
    MatvecConfig(block_n=1, block_u=16, num_warps=1),
]


def plane_views(planes):
    qs, d = planes
    return (qs.view(torch.int32), d)


def q8_0_matvec(x: torch.Tensor, planes, bias=None, config: MatvecConfig | None = None, xa=None) -> torch.Tensor:
    M, K = x.shape
    N = planes[0].shape[0]
    xa = act_quant(x) if xa is None else xa
    cfg = config or MATVEC_CONFIGS[0]
    return launch_matvec(_q8_0_matvec_kernel, xa, plane_views(planes), bias, M, N, K, K // 32, cfg, x.dtype)
