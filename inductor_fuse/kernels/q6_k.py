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

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

UNIT = tl.constexpr(32)  # weights per matvec unit

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
def _q6k_load_units(wctx, u, umask):
    # -> ql, qh int32 [BN, BU, 4]; sc0, sc1 int8 [BN, BU]; d f16 [BN, BU]
    ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, e = wctx
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
def _q6k_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    ql, qh, sc0, sc1, d = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    e = tl.arange(0, 4)
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
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _q6k_weight_ctx(
    ql_ptr,
    qh_ptr,
    sc_ptr,
    d_ptr,  # ql int32 [N, K/8]; qh int32 [N, K/16]; sc int8 [N, K/16]; d f16 [N, K/256]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _q6k_load_units (matvec_kernel builds it once, before the K loop)
    ql_row = rows_c.to(tl.int64) * rs0
    qh_row = rows_c.to(tl.int64) * rs1
    return (ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, rows_c, rs2, rs3, tl.arange(0, 4))


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel, float32 [BN, BK/32, 32], BK % 32 == 0.
# 32-group s = k // 32: block b = s//8, half h = (s%8)//4, r = s%4; element l:
# ql byte 128b + 64h + 32(r%2) + l, nibble r//2; qh byte 64b + 32h + l, bits 2r; scale sc[16b + 8h + 2r + l//16].
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q6k_dequant_tile(
    ql_ptr, qh_ptr, sc_ptr, d_ptr, rows, k0, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
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
# Spec
# ---------------------------------------------------------------------------------------------

MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=32, num_warps=2, prefetch=True),
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=64, num_warps=4),
    MatvecConfig(block_n=2, block_u=64, num_warps=4, prefetch=True),
    MatvecConfig(block_n=4, block_u=32, num_warps=4, prefetch=True),
    MatvecConfig(block_n=1, block_u=64, num_warps=2, prefetch=True),
    MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=True),
    MatvecConfig(block_n=1, block_u=32, num_warps=1, prefetch=True),
)


def default_config(M: int, N: int, K: int) -> MatvecConfig:
    """Measured on an H200 (CUDA graph over rotated weight copies: benchmarks/results/
    kernels_h200_tuning.json)."""
    if M > 1:
        return MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=True)
    if K >= 8192:
        return MatvecConfig(block_n=1, block_u=32, num_warps=1, prefetch=True)
    return MatvecConfig(block_n=2, block_u=32, num_warps=2)


def plane_views(planes):
    ql, qh, sc, d = planes
    return (ql.view(torch.int32), qh.view(torch.int32), sc, d)


# Above the matvec range (M <= 16): dequantize + cuBLAS straight away; no fused GEMM, whose tile
# needs three gathers per weight.
(SPEC,) = register_kernels(
    KernelSpec(
        fmt="q6_k",
        weight_ctx=_q6k_weight_ctx,
        load_units=_q6k_load_units,
        units_dot=_q6k_units_dot,
        unit=UNIT.value,
        plane_views=plane_views,
        dequant_tile=_q6k_dequant_tile,
        matvec_configs=MATVEC_CONFIGS,
        matvec_max_m=16,
        fused_gemm_max_m=0,
        default_config=default_config,
    )
)
