"""Q5_0 kernels: W5A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]   byte 16b + j: low nibble -> element j, high nibble -> element 16 + j
    qh uint8 [N, K/8]   4 little-endian bytes per block: bit i = 5th bit of element i
    d  f16   [N, K/32]
    w[n, 32b + i] = d * ((nibble | bit << 4) - 16)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block: 4 qs words + 1 qh word (the block's 32 bits). qs word e holds
# elements 4e..4e+3 (low nibbles) and 16+4e.. (high nibbles); their 5th bits are qh bits 4e..4e+3
# and 16+4e.., spread to bit 4 of each byte by the multiply trick
#   spread(b4) = ((b4 * 0x00204081) & 0x01010101) << 4       (b4 = 4 bits)
#   out[m, n] += d * (xd * (dp4a(q_lo, x_lo) + dp4a(q_hi, x_hi)) - 16 * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q5_0_load_units(wctx, u, umask):
    # -> q_lo, q_hi int32 [BN, BU, 4]: the 5-bit weights (bytes) of each block's elements 4e..4e+3
    #    and 16+4e..; d f32 [BN, BU]
    qs_ptr, qh_ptr, d_ptr, w_row, rows_c, rs1, rs2, e = wctx
    qs = tl.load(
        qs_ptr + w_row[:, None, None] + u[None, :, None] * 4 + e[None, None, :], mask=umask[None, :, None], other=0
    )  # [BN, BU, 4]
    qh = tl.load(qh_ptr + rows_c[:, None] * rs1 + u[None, :], mask=umask[None, :], other=0)  # [BN, BU]
    qh = qh[:, :, None]
    sh = (4 * e)[None, None, :]
    h_lo = ((((qh >> sh) & 0xF) * 0x00204081) & 0x01010101) << 4
    h_hi = ((((qh >> (sh + 16)) & 0xF) * 0x00204081) & 0x01010101) << 4
    q_lo = (qs & 0x0F0F0F0F) | h_lo
    q_hi = ((qs >> 4) & 0x0F0F0F0F) | h_hi
    d = tl.load(d_ptr + rows_c[:, None] * rs2 + u[None, :], mask=umask[None, :], other=0.0).to(tl.float32)
    return q_lo, q_hi, d


@triton.jit
def _q5_0_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    q_lo, q_hi, d = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    e = tl.arange(0, 4)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        xrow = tl.multiple_of(m * (K // 4), 8)
        x_lo = tl.load(
            tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + e[None, :])[None, :, :], q_lo.shape),
            mask=tl.broadcast_to(umask[None, :, None], q_lo.shape),
            other=0,
        )
        x_hi = tl.load(
            tl.broadcast_to((xq_ptr + xrow + u[:, None] * 8 + 4 + e[None, :])[None, :, :], q_lo.shape),
            mask=tl.broadcast_to(umask[None, :, None], q_lo.shape),
            other=0,
        )
        s = _dp4a(q_lo, x_lo, False, USE_ASM) + _dp4a(q_hi, x_hi, False, USE_ASM)
        s = tl.sum(s, axis=2)
        xd = tl.load(xd_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        xs = tl.load(xs32_ptr + m * (K // 32) + u, mask=umask, other=0.0)
        part = d * (xd[None, :] * s.to(tl.float32) - 16.0 * xs[None, :])
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _q5_0_weight_ctx(
    qs_ptr,
    qh_ptr,
    d_ptr,
    unused_ptr,  # qs int32 [N, K/8]; qh int32 [N, K/32]; d f16 [N, K/32]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _q5_0_load_units (matvec_kernel builds it once, before the K loop)
    return (qs_ptr, qh_ptr, d_ptr, rows_c.to(tl.int64) * rs0, rows_c, rs1, rs2, tl.arange(0, 4))


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel, float32 [BN, BK/32, 32]: block s = k // 32, i = k % 32, j = i % 16,
# nibble i // 16 of qs byte 16s + j, 5th bit = bit i of the block's qh (byte 4s + i // 8).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q5_0_dequant_tile(
    qs_ptr, qh_ptr, d_ptr, unused_ptr, rows, k0, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    i = tl.arange(0, 32)
    rows64 = rows.to(tl.int64)
    qsb = (s * 16)[:, None] + (i % 16)[None, :]
    qhb = (s * 4)[:, None] + (i // 8)[None, :]
    lo = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + qsb[None, :, :]).to(tl.int32)
    hb = tl.load(qh_ptr + rows64[:, None, None] * (K // 8) + qhb[None, :, :]).to(tl.int32)
    d = tl.load(d_ptr + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    q = ((lo >> ((i // 16) * 4)[None, None, :]) & 0xF) | (((hb >> (i % 8)[None, None, :]) & 1) << 4)
    w = d[:, :, None] * (q - 16).to(tl.float32)
    return w  # [BN, BK // 32, 32]


MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 32 weights
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=64, num_warps=4),
    MatvecConfig(block_n=4, block_u=32, num_warps=4),
    MatvecConfig(block_n=1, block_u=32, num_warps=1),
)


def plane_views(planes):
    qs, qh, d = planes
    return (qs.view(torch.int32), qh.view(torch.int32), d)


(SPEC,) = register_kernels(
    KernelSpec(
        fmt="q5_0",
        weight_ctx=_q5_0_weight_ctx,
        load_units=_q5_0_load_units,
        units_dot=_q5_0_units_dot,
        unit=UNIT.value,
        plane_views=plane_views,
        dequant_tile=_q5_0_dequant_tile,
        matvec_configs=MATVEC_CONFIGS,
        matvec_max_m=8,
        fused_gemm_max_m=64,
    )
)
