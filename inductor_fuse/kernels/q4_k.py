"""Q4_K kernels: W4A8 decode matvec (dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract), weight [N, K], K % 256 == 0:
    qs uint8 [N, K/2]    block b, chunk j (0..3), byte l (0..31) at 128b + 32j + l:
                         low nibble = sub-block 2j element l, high nibble = sub-block 2j+1 element l
    sm uint8 [N, K/16]   sub-block s of block b: sc at 16b + 2s, m at 16b + 2s + 1 (6-bit)
    dm f16   [N, K/128]  block b: d at 2b, dmin at 2b + 1
    w[n, 256b + 32s + l] = d*sc_s * q - dmin*m_s
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, MatvecConfig, _dp4a, add_to_row, register_kernels

UNIT = tl.constexpr(64)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one 64-wide chunk u = 4b + j of K: 32 qs bytes = 8 int32 words, whose low
# nibbles are sub-block 2j and high nibbles sub-block 2j+1; word t holds elements 4t..4t+3 of
# both. Loaded as two 16-byte halves (words 0-3, 4-7) of one layout, so a thread owns a unit.
# With x quantized per 32-group (xq, xd, xs32 = xd * sum(xq)):
#   out[m, n] = sum_u  d*sc_lo*xd_lo * dp4a(w & 0x0F0F0F0F, x_lo)
#                    + d*sc_hi*xd_hi * dp4a((w >> 4) & 0x0F0F0F0F, x_hi)
#                    - dmin*(m_lo*xs32_lo + m_hi*xs32_hi)
# where dp4a sums over the 8 words of the sub-block: the scales are applied once per 32 weights,
# to an integer partial sum. The 4 bytes (sc_lo, m_lo, sc_hi, m_hi) of unit u are sm's int32
# word u.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q4k_load_units(wctx, u, umask):
    # -> wa, wb int32 [BN, BU, 4]: the two 16-byte halves of each unit (same layout, so one thread
    #    holds a whole unit: no shuffle for the sub-block sums and the unit's scale math done once);
    #    smw int32 [BN, BU] (sc_lo, m_lo, sc_hi, m_hi); d, dmin f16 [BN, BU]
    qs_ptr, sm_ptr, dm_ptr, w_row, rows_c, rs1, rs2, e = wctx
    wp = qs_ptr + w_row[:, None, None] + u[None, :, None] * 8 + e[None, None, :]
    wa = tl.load(wp, mask=umask[None, :, None], other=0)
    wb = tl.load(wp + 4, mask=umask[None, :, None], other=0)
    smw = tl.load(sm_ptr + rows_c[:, None] * rs1 + u[None, :], mask=umask[None, :], other=0)
    d = tl.load(dm_ptr + rows_c[:, None] * rs2 + (u // 4)[None, :] * 2, mask=umask[None, :], other=0.0)
    dmin = tl.load(dm_ptr + rows_c[:, None] * rs2 + (u // 4)[None, :] * 2 + 1, mask=umask[None, :], other=0.0)
    return wa, wb, smw, d, dmin


@triton.jit
def _q4k_units_dot(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):
    # adds the units' contributions to accs (row m = pid_m * BLOCK_M + i to accs[i])
    wa, wb, smw, d, dmin = w
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    e = tl.arange(0, 4)
    wa_lo = wa & 0x0F0F0F0F
    wa_hi = (wa >> 4) & 0x0F0F0F0F
    wb_lo = wb & 0x0F0F0F0F
    wb_hi = (wb >> 4) & 0x0F0F0F0F
    d = d.to(tl.float32)
    dmin = dmin.to(tl.float32)
    dsc_lo = d * (smw & 0xFF).to(tl.float32)
    dm_lo = dmin * ((smw >> 8) & 0xFF).to(tl.float32)
    dsc_hi = d * ((smw >> 16) & 0xFF).to(tl.float32)
    dm_hi = dmin * ((smw >> 24) & 0xFF).to(tl.float32)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        xrow = tl.multiple_of(m * (K // 4), 8)
        # x words loaded in the weight tile's shape (broadcast pointers): same layout, no shuffle
        xp = tl.broadcast_to((xq_ptr + xrow + u[:, None] * 16 + e[None, :])[None, :, :], wa.shape)
        xmask = tl.broadcast_to(umask[None, :, None], wa.shape)
        x_lo_a = tl.load(xp, mask=xmask, other=0)
        x_lo_b = tl.load(xp + 4, mask=xmask, other=0)
        x_hi_a = tl.load(xp + 8, mask=xmask, other=0)
        x_hi_b = tl.load(xp + 12, mask=xmask, other=0)
        s_lo = tl.sum(_dp4a(wa_lo, x_lo_a, False, USE_ASM) + _dp4a(wb_lo, x_lo_b, False, USE_ASM), axis=2)
        s_hi = tl.sum(_dp4a(wa_hi, x_hi_a, False, USE_ASM) + _dp4a(wb_hi, x_hi_b, False, USE_ASM), axis=2)
        g = m * (K // 32) + 2 * u
        xd_lo = tl.load(xd_ptr + g, mask=umask, other=0.0)
        xd_hi = tl.load(xd_ptr + g + 1, mask=umask, other=0.0)
        xs_lo = tl.load(xs32_ptr + g, mask=umask, other=0.0)
        xs_hi = tl.load(xs32_ptr + g + 1, mask=umask, other=0.0)
        part = (
            dsc_lo * (xd_lo[None, :] * s_lo.to(tl.float32))
            + dsc_hi * (xd_hi[None, :] * s_hi.to(tl.float32))
            - dm_lo * xs_lo[None, :]
            - dm_hi * xs_hi[None, :]
        )
        accs = add_to_row(accs, part, mi)
    return accs


@triton.jit
def _q4k_weight_ctx(
    qs_ptr,
    sm_ptr,
    dm_ptr,
    unused_ptr,  # qs int32 [N, K/8]; sm int32 [N, K/64]; dm f16 [N, K/128]
    rows_c,
    rs0,
    rs1,
    rs2,
    rs3,
    GROUP: tl.constexpr,
):
    # -> wctx, the loop invariants of _q4k_load_units (matvec_kernel builds it once, before the K loop)
    return (qs_ptr, sm_ptr, dm_ptr, rows_c.to(tl.int64) * rs0, rows_c, rs1, rs2, tl.arange(0, 4))


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel: w[n, k0 + 32s + i] as float32 [BN, BK/32, 32].
# Sub-block s = k // 32: block b = s // 8, sb = s % 8, bytes 128b + 32(sb//2) + l, nibble sb % 2.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _q4k_dequant_tile(
    qs_ptr, sm_ptr, dm_ptr, unused_ptr, rows, k0, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    # qs uint8 [N, K/2]; sm uint8 [N, K/16]; dm f16 [N, K/128]; rows [BN] (valid) -> f32 [BN, BK]
    S: tl.constexpr = BLOCK_K // 32
    s = k0 // 32 + tl.arange(0, S)
    l = tl.arange(0, 32)
    b = s // 8
    sb = s % 8
    rows64 = rows.to(tl.int64)
    byte = (b * 128 + (sb // 2) * 32)[:, None] + l[None, :]  # [S, 32]
    qb = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + byte[None, :, :]).to(tl.int32)
    q = (qb >> ((sb % 2) * 4)[None, :, None]) & 0xF
    sc = tl.load(sm_ptr + rows[:, None] * (K // 16) + (b * 16 + sb * 2)[None, :]).to(tl.float32)
    mn = tl.load(sm_ptr + rows[:, None] * (K // 16) + (b * 16 + sb * 2 + 1)[None, :]).to(tl.float32)
    d = tl.load(dm_ptr + rows[:, None] * (K // 128) + (b * 2)[None, :]).to(tl.float32)
    dmin = tl.load(dm_ptr + rows[:, None] * (K // 128) + (b * 2 + 1)[None, :]).to(tl.float32)
    w = (d * sc)[:, :, None] * q.to(tl.float32) - (dmin * mn)[:, :, None]
    return w  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

MATVEC_CONFIGS = (  # the first is the default (interpreter, capture); a unit is 32 bytes of qs
    MatvecConfig(block_n=2, block_u=16, num_warps=1),
    MatvecConfig(block_n=2, block_u=32, num_warps=1),
    MatvecConfig(block_n=4, block_u=16, num_warps=1),
    MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=True),
    MatvecConfig(block_n=4, block_u=32, num_warps=2),
    MatvecConfig(block_n=2, block_u=32, num_warps=2),
    MatvecConfig(block_n=1, block_u=32, num_warps=1),
    MatvecConfig(block_n=4, block_u=16, num_warps=2, prefetch=True),
)


def default_config(M: int, N: int, K: int) -> MatvecConfig:
    """Measured on an H200 (CUDA graph over rotated weight copies: benchmarks/results/
    kernels_h200_tuning.json): the prefetch pays off once x has several rows."""
    return MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=M > 1)


def plane_views(planes):
    qs, sm, dm = planes
    return (qs.view(torch.int32), sm.view(torch.int32), dm)


(SPEC,) = register_kernels(
    KernelSpec(
        fmt="q4_k",
        weight_ctx=_q4k_weight_ctx,
        load_units=_q4k_load_units,
        units_dot=_q4k_units_dot,
        unit=UNIT.value,
        plane_views=plane_views,
        dequant_tile=_q4k_dequant_tile,
        matvec_configs=MATVEC_CONFIGS,
        matvec_max_m=8,
        fused_gemm_max_m=64,
        default_config=default_config,
    )
)
