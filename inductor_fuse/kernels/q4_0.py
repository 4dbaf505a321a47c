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

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

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
    qs_ptr, d_ptr, w_row, rows_c, rs1 = wctx
    e = tl.arange(0, 4)
    w = tl.load(
        qs_ptr + w_row[:, None, None] + u[None, :, None] * 4 + e[None, None, :], mask=umask[None, :, None], other=0
    )
    d = tl.load(d_ptr + rows_c[:, None] * rs1 + u[None, :], mask=umask[None, :], other=0.0)
    return w, d


@triton.jit
def _q4_0_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    # adds the units' contributions to accs (row m = pid_m * BLOCK_M + i to accs[i])
    w, d = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    e = tl.arange(0, 4)
    q_lo = w & 0x0F0F0F0F
    q_hi = (w >> 4) & 0x0F0F0F0F
    d = d.to(tl.float32)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        xrow = tl.multiple_of(m * (K // 4), 8)
        # x words loaded in the weight tile's shape (broadcast pointers): same layout, no shuffle
        xp = tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + e[None, :])[None, :, :], w.shape)
        xmask = tl.broadcast_to(umask[None, :, None], w.shape)
        x_lo = tl.load(xp, mask=xmask, other=0)
        x_hi = tl.load(xp + 4, mask=xmask, other=0)
        s = tl.sum(_dp4a(q_lo, x_lo, False, USE_ASM) + _dp4a(q_hi, x_hi, False, USE_ASM), axis=2)
        xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        xs = tl.load(xs32_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        part = d * (xd[None, :] * s.to(tl.float32) - 8.0 * xs[None, :])
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _q4_0_weight_ctx(
    qs_ptr,
    d_ptr,
    unused0_ptr,
    unused1_ptr,  # qs int32 [N, K/8]; d f16 [N, K/32]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _q4_0_load_units (matvec_kernel builds it once, before the K loop)
    return (qs_ptr, d_ptr, rows_c.to(tl.int64) * rs0, rows_c, rs1)


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel, float32 [BN, BK/32, 32]: block s = k // 32,
# i = k % 32: nibble i // 16 of qs byte 16s + i % 16. The planes as stored (qs uint8; the pointer
# is cast, so an int32 view of qs reads the same bytes).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q4_0_dequant_tile(
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
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    i = tl.arange(0, 32)
    rows64 = rows.to(tl.int64)
    qsb = (s * 16)[:, None] + (i % 16)[None, :]  # [S, 32]
    qs_u8 = qs_ptr.to(tl.pointer_type(tl.uint8))
    b = tl.load(qs_u8 + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + qsb[None, :, :]).to(tl.int32)
    q = (b >> ((i // 16) * 4)[None, None, :]) & 0xF
    d = tl.load(d_ptr + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * (q - 8).to(tl.float32)  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 16 bytes of qs
    MatvecConfig(block_n=2, block_u=32, num_warps=1),
    MatvecConfig(block_n=2, block_u=16, num_warps=1),
    MatvecConfig(block_n=4, block_u=16, num_warps=1),
    MatvecConfig(block_n=2, block_u=32, num_warps=1, prefetch=True),
    MatvecConfig(block_n=2, block_u=64, num_warps=2),
    MatvecConfig(block_n=4, block_u=32, num_warps=2),
    MatvecConfig(block_n=1, block_u=32, num_warps=1),
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
)


def default_config(M: int, N: int, K: int) -> MatvecConfig:
    """Not measured yet: Q4_K's measured policy (prefetch once x has several rows) on this kernel's
    default tile (same bytes per program and step as Q4_K's default)."""
    return MatvecConfig(block_n=2, block_u=32, num_warps=1, prefetch=M > 1)


def plane_views(planes):
    qs, d = planes
    return (qs.view(torch.int32), d)


(SPEC,) = register_kernels(
    KernelSpec(
        fmt="q4_0",
        weight_ctx=_q4_0_weight_ctx,
        load_units=_q4_0_load_units,
        units_dot=_q4_0_units_dot,
        unit=UNIT.value,
        plane_views=plane_views,
        dequant_tile=_q4_0_dequant_tile,
        matvec_configs=MATVEC_CONFIGS,
        matvec_max_m=8,
        fused_gemm_max_m=64,
        default_config=default_config,
    )
)
