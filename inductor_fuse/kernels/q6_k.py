"""Q6_K kernels: W6A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 256 == 0; block b, half h (0..1) of 128:
    ql uint8 [N, K/2]   byte 128b + 64h + l (l < 64): low nibble -> element 128h + l,
                        high nibble -> element 128h + 64 + l
    qh uint8 [N, K/4]   byte 64b + 32h + l (l < 32): bits 2r..2r+1 -> element 128h + 32r + l
    sc int8  [N, K/16]  16-group i of block b at 16b + i
    d  f16   [N, K/256]
    w[n, 256b + i] = d * sc[i // 16] * (q6 - 32),  q6 = ql nibble | (qh 2 bits << 4)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MatvecConfig, _dp4a, _matvec_epilogue, act_quant, launch_matvec

# ---------------------------------------------------------------------------------------------
# Matvec. A unit c (32 weights' worth of ql: 4 int32 words) is c = 4H + 2p + q with H the global
# 128-half, p which 32 bytes of the half's 64 ql bytes, q which 16 of those 32. Its 4 ql words e
# (bytes 4e..4e+3) give, for s = 0 (low nibbles) and s = 1 (high nibbles), the 16 elements
#   128H + 32r + 16q + 4e + (0..3),  r = p + 2s
# whose top bits are bits 2r of qh word 8H + 4q + e, and whose scale is sc[8H + 2r + q].
#   q6 bytes  = ((ql >> 4s) & 0x0F0F0F0F) | (((qh >> 2r) & 0x03030303) << 4)
#   out[m,n] += d * sc * (xd * dp4a(q6, x) - 32 * xs16)      (per 16 weights)
# xs16 = xd * sum(xq) over the 16 elements takes the -32 offset out of the integer loop.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q6k_load_units(ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, u, umask, e):
    # -> ql, qh int32 [BN, BU, 4]; sc0, sc1 int8 [BN, BU]; d f16 [BN, BU]
    H = u // 4
    q = u % 2
    ql = tl.load(
        ql_ptr + ql_row[:, None, None] + u[None, :, None] * 4 + e[None, None, :], mask=umask[None, :, None], other=0
    )
    qh = tl.load(
        qh_ptr + qh_row[:, None, None] + (H * 8 + q * 4)[None, :, None] + e[None, None, :],
        mask=umask[None, :, None],
        other=0,
    )
    sci = rows_c[:, None] * rs2 + (u + 4 * H)[None, :]
    sc0 = tl.load(sc_ptr + sci, mask=umask[None, :], other=0)
    sc1 = tl.load(sc_ptr + sci + 4, mask=umask[None, :], other=0)
    d = tl.load(d_ptr + rows_c[:, None] * rs3 + (u // 8)[None, :], mask=umask[None, :], other=0.0)
    return ql, qh, sc0, sc1, d


@triton.jit
def _q6k_units_dot(
    ql,
    qh,
    sc0,
    sc1,
    d,
    u,
    umask,
    e,
    xq_ptr,
    xd_ptr,
    xs16_ptr,
    pid_m,
    M,
    K,
    acc0,
    acc1,
    acc2,
    acc3,
    acc4,
    acc5,
    acc6,
    acc7,
    BLOCK_M: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    H = u // 4
    p = (u % 4) // 2
    q = u % 2
    sh = (2 * p)[None, :, None]
    q0 = (ql & 0x0F0F0F0F) | (((qh >> sh) & 0x03030303) << 4)
    q1 = ((ql >> 4) & 0x0F0F0F0F) | (((qh >> (sh + 4)) & 0x03030303) << 4)
    d = d.to(tl.float32)
    dsc0 = d * sc0.to(tl.float32)
    dsc1 = d * sc1.to(tl.float32)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        xrow = tl.multiple_of(m * (K // 4), 8)
        xw = 32 * H + 8 * p + 4 * q
        x0 = tl.load(
            tl.broadcast_to((xq_ptr + xrow + xw[:, None] + e[None, :])[None, :, :], ql.shape),
            mask=tl.broadcast_to(umask[None, :, None], ql.shape),
            other=0,
        )
        x1 = tl.load(
            tl.broadcast_to((xq_ptr + xrow + xw[:, None] + 16 + e[None, :])[None, :, :], ql.shape),
            mask=tl.broadcast_to(umask[None, :, None], ql.shape),
            other=0,
        )
        isum0 = tl.sum(_dp4a(q0, x0, False, USE_ASM), axis=2)
        isum1 = tl.sum(_dp4a(q1, x1, False, USE_ASM), axis=2)
        g16 = m * (K // 16) + 8 * H + 2 * p + q
        g32 = m * (K // 32) + 4 * H + p
        xd0 = tl.load(xd_ptr + g32, mask=umask, other=0.0)
        xd1 = tl.load(xd_ptr + g32 + 2, mask=umask, other=0.0)
        xs0 = tl.load(xs16_ptr + g16, mask=umask, other=0.0)
        xs1 = tl.load(xs16_ptr + g16 + 4, mask=umask, other=0.0)
        part = dsc0 * (xd0[None, :] * isum0.to(tl.float32) - 32.0 * xs0[None, :]) + dsc1 * (
            xd1[None, :] * isum1.to(tl.float32) - 32.0 * xs1[None, :]
        )
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
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def _q6k_matvec_kernel(
    xq_ptr,
    xd_ptr,
    xs32_ptr,
    xs16_ptr,  # xq int32 [M, K/4]; xd f32 [M, K/32]; xs16 f32 [M, K/16]
    ql_ptr,
    qh_ptr,
    sc_ptr,
    d_ptr,  # ql int32 [N, K/8]; qh int32 [N, K/16]; sc int8 [N, K/16]; d f16 [N, K/256]
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
    e = tl.arange(0, 4)
    acc0 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc6 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    acc7 = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    ql_row = rows_c.to(tl.int64) * rs0
    qh_row = rows_c.to(tl.int64) * rs1
    if PREFETCH:  # registers double-buffered: the next units' loads fly while these compute
        u = u_lo + ub
        umask = u < u_hi
        ql, qh, sc0, sc1, d = _q6k_load_units(
            ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, u, umask, e
        )
        for u0 in range(u_lo, u_hi, BLOCK_U):
            un = u0 + BLOCK_U + ub
            unmask = un < u_hi
            ql_n, qh_n, sc0_n, sc1_n, d_n = _q6k_load_units(
                ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, un, unmask, e
            )
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _q6k_units_dot(
                ql,
                qh,
                sc0,
                sc1,
                d,
                u,
                umask,
                e,
                xq_ptr,
                xd_ptr,
                xs16_ptr,
                pid_m,
                M,
                K,
                acc0,
                acc1,
                acc2,
                acc3,
                acc4,
                acc5,
                acc6,
                acc7,
                BLOCK_M,
                USE_ASM,
            )
            ql, qh, sc0, sc1, d, u, umask = ql_n, qh_n, sc0_n, sc1_n, d_n, un, unmask
    else:
        for u0 in range(u_lo, u_hi, BLOCK_U):
            u = u0 + ub
            umask = u < u_hi
            ql, qh, sc0, sc1, d = _q6k_load_units(
                ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, u, umask, e
            )
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _q6k_units_dot(
                ql,
                qh,
                sc0,
                sc1,
                d,
                u,
                umask,
                e,
                xq_ptr,
                xd_ptr,
                xs16_ptr,
                pid_m,
                M,
                K,
                acc0,
                acc1,
                acc2,
                acc3,
                acc4,
                acc5,
                acc6,
                acc7,
                BLOCK_M,
                USE_ASM,
            )
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


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel, float32 [BN, BK/32, 32], BK % 32 == 0.
# 32-group s = k // 32: block b = s//8, half h = (s%8)//4, r = s%4; element l:
# ql byte 128b + 64h + 32(r%2) + l, nibble r//2; qh byte 64b + 32h + l, bits 2r; scale sc[16b + 8h + 2r + l//16].
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q6k_dequant_tile(ql_ptr, qh_ptr, sc_ptr, d_ptr, rows, k0, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    l = tl.arange(0, 32)
    b = s // 8
    h = (s % 8) // 4
    r = s % 4
    rows64 = rows.to(tl.int64)
    qlb = (b * 128 + h * 64 + (r % 2) * 32)[:, None] + l[None, :]
    qhb = (b * 64 + h * 32)[:, None] + l[None, :]
    scb = (b * 16 + h * 8 + r * 2)[:, None] + (l // 16)[None, :]
    lo = tl.load(ql_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + qlb[None, :, :]).to(tl.int32)
    hi = tl.load(qh_ptr + tl.multiple_of(rows64 * (K // 4), 8)[:, None, None] + qhb[None, :, :]).to(tl.int32)
    sc = tl.load(sc_ptr + rows64[:, None, None] * (K // 16) + scb[None, :, :]).to(tl.float32)
    d = tl.load(d_ptr + rows[:, None] * (K // 256) + b[None, :]).to(tl.float32)
    q6 = ((lo >> ((r // 2) * 4)[None, :, None]) & 0xF) | (((hi >> (2 * r)[None, :, None]) & 3) << 4)
    w = d[:, :, None] * sc * (q6 - 32).to(tl.float32)
    return w  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

MATVEC_CONFIGS = [  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=32, num_warps=2, prefetch=True),
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=64, num_warps=4),
    MatvecConfig(block_n=2, block_u=64, num_warps=4, prefetch=True),
    MatvecConfig(block_n=4, block_u=32, num_warps=4, prefetch=True),
    MatvecConfig(block_n=1, block_u=64, num_warps=2, prefetch=True),
    MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=True),
    MatvecConfig(block_n=1, block_u=32, num_warps=1, prefetch=True),
]


def plane_views(planes):
    ql, qh, sc, d = planes
    return (ql.view(torch.int32), qh.view(torch.int32), sc, d)


def q6k_matvec(x: torch.Tensor, planes, bias=None, config: MatvecConfig | None = None, xa=None) -> torch.Tensor:
    M, K = x.shape
    N = planes[0].shape[0]
    xa = act_quant(x) if xa is None else xa
    cfg = config or MATVEC_CONFIGS[0]
    return launch_matvec(_q6k_matvec_kernel, xa, plane_views(planes), bias, M, N, K, K // 32, cfg, x.dtype)
