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

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. The activation is quantized INTERLEAVED (see act_quant), so that qs word e of a 32-unit
# (elements 8e..8e+7) meets x word e with its low nibbles (even elements) and x word 4 + e with
# its high nibbles (odd elements). Per 32 weights:
#   out[m, n] += scale * (xd * dp4a-sum - zero * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _int4_load_units(wctx, u, umask):
    # -> w_lo, w_hi int32 [BN, BU, 4]: the even / odd elements' nibbles (bytes); sc and
    #    zs = scale * zero f32 [BN, BU] (of each unit's group)
    qs_ptr, scale_ptr, zero_ptr, w_row, rows_c, rs1, GROUP, e = wctx
    w = tl.load(
        qs_ptr + w_row[:, None, None] + u[None, :, None] * 4 + e[None, None, :], mask=umask[None, :, None], other=0
    )  # [BN, BU, 4]
    w_lo = w & 0x0F0F0F0F
    w_hi = (w >> 4) & 0x0F0F0F0F
    gi = rows_c[:, None] * rs1 + (u * 32 // GROUP)[None, :]
    sc = tl.load(scale_ptr + gi, mask=umask[None, :], other=0.0).to(tl.float32)
    zs = sc * tl.load(zero_ptr + gi, mask=umask[None, :], other=0.0).to(tl.float32)
    return w_lo, w_hi, sc, zs


@triton.jit
def _int4_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    w_lo, w_hi, sc, zs = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    e = tl.arange(0, 4)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        xrow = tl.multiple_of(m * (K // 4), 8)
        x_lo = tl.load(
            tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + e[None, :])[None, :, :], w_lo.shape),
            mask=tl.broadcast_to(umask[None, :, None], w_lo.shape),
            other=0,
        )
        x_hi = tl.load(
            tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + 4 + e[None, :])[None, :, :], w_lo.shape),
            mask=tl.broadcast_to(umask[None, :, None], w_lo.shape),
            other=0,
        )
        s = _dp4a(w_lo, x_lo, False, USE_ASM) + _dp4a(w_hi, x_hi, False, USE_ASM)
        s = tl.sum(s, axis=2)
        xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        xs = tl.load(xs32_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        part = sc * (xd[None, :] * s.to(tl.float32)) - zs * xs[None, :]
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _int4_weight_ctx(
    qs_ptr,
    scale_ptr,
    zero_ptr,
    unused_ptr,  # qs int32 [N, K/8]; scale, zero f16 [N, K/G]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _int4_load_units (matvec_kernel builds it once, before the K loop)
    return (qs_ptr, scale_ptr, zero_ptr, rows_c.to(tl.int64) * rs0, rows_c, rs1, GROUP, tl.arange(0, 4))


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


MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=64, num_warps=4),
    MatvecConfig(block_n=4, block_u=32, num_warps=4),
    MatvecConfig(block_n=1, block_u=32, num_warps=1),
)


def plane_views(planes):
    qs, scale, zero = planes
    return (qs.view(torch.int32), scale, zero)


SPECS = register_kernels(
    *(
        KernelSpec(
            fmt=f"int4_g{group}",
            weight_ctx=_int4_weight_ctx,
            load_units=_int4_load_units,
            units_dot=_int4_units_dot,
            unit=UNIT.value,
            plane_views=plane_views,
            dequant_tile=_int4_dequant_tile,
            matvec_configs=MATVEC_CONFIGS,
            matvec_max_m=8,
            fused_gemm_max_m=64,
            interleave=True,
            group=group,
        )
        for group in (32, 64, 128)
    )
)
