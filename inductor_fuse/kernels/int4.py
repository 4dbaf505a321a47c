"""int4_gG kernels (G = 32, 64, 128; asymmetric): W4A8 decode matvec and the GEMM weight tile.

Planes (docs/design.md contract), weight [N, K], K % G == 0:
    qs    uint8 [N, K/2]   byte i: element 2i in the low nibble, 2i + 1 in the high nibble
    scale f16   [N, K/G]   zero f16 [N, K/G]
    w[n, k] = (q[n, k] - zero[n, k // G]) * scale[n, k // G]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MatvecConfig, _dp4a, _matvec_epilogue, act_quant, launch_matvec

# ---------------------------------------------------------------------------------------------
# Matvec. The activation is quantized INTERLEAVED (see act_quant), so that qs word e of a 32-unit
# (elements 8e..8e+7) meets x word e with its low nibbles (even elements) and x word 4 + e with
# its high nibbles (odd elements). Per 32 weights:
#   out[m, n] += scale * (xd * dp4a-sum - zero * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _int4_matvec_kernel(
    xq_ptr,
    xd_ptr,
    xs32_ptr,
    xs16_ptr,  # xq int32 [M, K/4] (interleaved); xd, xs32 f32 [M, K/32]
    qs_ptr,
    scale_ptr,
    zero_ptr,
    unused_ptr,  # qs int32 [N, K/8]; scale, zero f16 [N, K/G]
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
    w_row = rows_c.to(tl.int64) * rs0
    for u0 in range(u_lo, u_hi, BLOCK_U):
        u = u0 + ub
        umask = u < u_hi
        w = tl.load(
            qs_ptr + w_row[:, None, None] + u[None, :, None] * 4 + e[None, None, :], mask=umask[None, :, None], other=0
        )  # [BN, BU, 4]
        w_lo = w & 0x0F0F0F0F
        w_hi = (w >> 4) & 0x0F0F0F0F
        gi = rows_c[:, None] * rs1 + (u * 32 // GROUP)[None, :]
        sc = tl.load(scale_ptr + gi, mask=umask[None, :], other=0.0).to(tl.float32)
        zs = sc * tl.load(zero_ptr + gi, mask=umask[None, :], other=0.0).to(tl.float32)
        for mi in tl.static_range(BLOCK_M):
            m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
            xrow = tl.multiple_of(m * (K // 4), 8)
            x_lo = tl.load(
                tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + e[None, :])[None, :, :], w.shape),
                mask=tl.broadcast_to(umask[None, :, None], w.shape),
                other=0,
            )
            x_hi = tl.load(
                tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + 4 + e[None, :])[None, :, :], w.shape),
                mask=tl.broadcast_to(umask[None, :, None], w.shape),
                other=0,
            )
            s = _dp4a(w_lo, x_lo, False, USE_ASM) + _dp4a(w_hi, x_hi, False, USE_ASM)
            s = tl.sum(s, axis=2)
            xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
            xs = tl.load(xs32_ptr + m * (K // 32) + u, mask=umask, other=0.0)
            part = sc * (xd[None, :] * s.to(tl.float32)) - zs * xs[None, :]
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
def _int4_dequant_tile(
    qs_ptr,
    scale_ptr,
    zero_ptr,
    unused_ptr,
    rows,
    k0,
    K,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # float32 [BN, BK/32, 32]: element k = k0 + 32s + i
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    i = tl.arange(0, 32)
    k = (s * 32)[:, None] + i[None, :]  # [S, 32]
    rows64 = rows.to(tl.int64)
    qb = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + (k // 2)[None, :, :]).to(tl.int32)
    q = (qb >> ((i % 2) * 4)[None, None, :]) & 0xF
    gi = rows[:, None] * (K // GROUP) + (s * 32 // GROUP)[None, :]
    sc = tl.load(scale_ptr + gi).to(tl.float32)
    z = tl.load(zero_ptr + gi).to(tl.float32)
    return (q.to(tl.float32) - z[:, :, None]) * sc[:, :, None]


MATVEC_CONFIGS = [  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=64, num_warps=4),
    MatvecConfig(block_n=4, block_u=32, num_warps=4),
    MatvecConfig(block_n=1, block_u=32, num_warps=1),
]


def plane_views(planes):
    qs, scale, zero = planes
    return (qs.view(torch.int32), scale, zero)


def int4_matvec(
    x: torch.Tensor, planes, bias=None, group: int = 32, config: MatvecConfig | None = None, xa=None
) -> torch.Tensor:
    M, K = x.shape
    N = planes[0].shape[0]
    xa = act_quant(x, interleave=True) if xa is None else xa
    cfg = config or MATVEC_CONFIGS[0]
    return launch_matvec(
        _int4_matvec_kernel, xa, plane_views(planes), bias, M, N, K, K // 32, cfg, x.dtype, group=group
    )
