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

from ._common import KernelSpec, dot_pair, prefetch_when_batched, register_kernels, unit_halves, unit_scalars, x_scales

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
    qs_ptr, sm_ptr, dm_ptr, _, qs_row, sm_row, dm_row, _, _, _ = wctx
    wa, wb = unit_halves(qs_ptr, qs_row, u, umask)
    smw = unit_scalars(sm_ptr, sm_row, u, umask)
    d = unit_scalars(dm_ptr, dm_row, (u // 4) * 2, umask)
    dmin = unit_scalars(dm_ptr, dm_row, (u // 4) * 2, umask, 1)
    return wa, wb, smw, d, dmin


@triton.jit
def q4k_decode(w, u, USE_ASM: tl.constexpr):
    # -> the four nibble planes; d * sc and dmin * m of both sub-blocks, float32 [BN, BU]
    wa, wb, smw, d, dmin = w
    d = d.to(tl.float32)
    dmin = dmin.to(tl.float32)
    return (
        wa & 0x0F0F0F0F,
        (wa >> 4) & 0x0F0F0F0F,
        wb & 0x0F0F0F0F,
        (wb >> 4) & 0x0F0F0F0F,
        d * (smw & 0xFF).to(tl.float32),
        dmin * ((smw >> 8) & 0xFF).to(tl.float32),
        d * ((smw >> 16) & 0xFF).to(tl.float32),
        dmin * ((smw >> 24) & 0xFF).to(tl.float32),
    )


@triton.jit
def q4k_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    wa_lo, wa_hi, wb_lo, wb_hi, dsc_lo, dm_lo, dsc_hi, dm_hi = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    s_lo, s_hi = dot_pair(wa_lo, wb_lo, wa_hi, wb_hi, xq_ptr, m, K, u * 16, umask, False, USE_ASM)
    xd_lo = x_scales(xd_ptr, m, K // 32, 2 * u, umask)
    xd_hi = x_scales(xd_ptr, m, K // 32, 2 * u, umask, 1)
    xs_lo = x_scales(xs32_ptr, m, K // 32, 2 * u, umask)
    xs_hi = x_scales(xs32_ptr, m, K // 32, 2 * u, umask, 1)
    return (
        dsc_lo * (xd_lo[None, :] * s_lo.to(tl.float32))
        + dsc_hi * (xd_hi[None, :] * s_hi.to(tl.float32))
        - dm_lo * xs_lo[None, :]
        - dm_hi * xs_hi[None, :]
    )


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel: w[n, k0 + 32s + i] as float32 [BN, BK/32, 32].
# Sub-block s = k // 32: block b = s // 8, sb = s % 8, bytes 128b + 32(sb//2) + l, nibble sb % 2.
# ---------------------------------------------------------------------------------------------


@triton.jit
def q4k_nibbles(qs_ptr, rows64, s, K):
    # qs uint8 [N, K/2] -> the 4-bit codes of the 32-blocks s [S] of rows64 [BN], int32 [BN, S, 32]
    l = tl.arange(0, 32)
    b = s // 8
    sb = s % 8
    byte = (b * 128 + (sb // 2) * 32)[:, None] + l[None, :]  # [S, 32]
    qb = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + byte[None, :, :]).to(tl.int32)
    return (qb >> ((sb % 2) * 4)[None, :, None]) & 0xF


@triton.jit
def kquant_weights(q, sm_ptr, dm_ptr, rows, s, K):
    # codes q int32 [BN, S, 32] of the 32-blocks s -> float32 d*sc * q - dmin*m (Q4_K's and Q5_K's
    # sm uint8 [N, K/16] and dm f16 [N, K/128])
    b = s // 8
    sb = s % 8
    sc = tl.load(sm_ptr + rows[:, None] * (K // 16) + (b * 16 + sb * 2)[None, :]).to(tl.float32)
    mn = tl.load(sm_ptr + rows[:, None] * (K // 16) + (b * 16 + sb * 2 + 1)[None, :]).to(tl.float32)
    d = tl.load(dm_ptr + rows[:, None] * (K // 128) + (b * 2)[None, :]).to(tl.float32)
    dmin = tl.load(dm_ptr + rows[:, None] * (K // 128) + (b * 2 + 1)[None, :]).to(tl.float32)
    return (d * sc)[:, :, None] * q.to(tl.float32) - (dmin * mn)[:, :, None]


@triton.jit
def _q4k_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    # p: qs uint8 [N, K/2]; sm uint8 [N, K/16]; dm f16 [N, K/128]; rows [BN] (valid) -> f32 [BN, S, 32]
    return kquant_weights(q4k_nibbles(p[0], rows64, s, K), p[1], p[2], rows, s, K)


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

# The matvec default: measured on an H200 (CUDA graph over rotated weight copies). With bf16 / fp16
# x: the matvec at M = 1, 2; w4a16_sync at 3..16 (x through its shared-memory ring: 1.16-1.53x faster
# than w4a16_mma at M = 8 and 16 on the Llama-3-8B shapes, 2026-12-05-w4a16-sync-xstages.json; on an
# H100 at M = 3 / 4 1.03-1.56x faster than the matvec, at M = 2 1.04-1.33x slower,
# 2026-12-05-w4a16-sync-masked-x-h100.json); w4a16_mma at 17..64 (at M = 16..32 faster than int8_mma:
# 2026-12-04-small-m-w4a16.json). float32 x: the matvec up to M = 4, then int8_mma up to 32.
(SPEC,) = register_kernels(
    KernelSpec("q4_k", UNIT.value, _q4k_load_units, q4k_decode, q4k_row_dot, _q4k_dequant_tile,
               plane_dtypes=(torch.int32, torch.int32, None), default_config=prefetch_when_batched(2, 16, num_warps=1),
               matvec_max_m=4, int8_mma_max_m=32, w4a16_sync_min_m=3, w4a16_sync_max_m=16, w4a16_mma_max_m=64)
)  # fmt: skip
