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

from ._common import KernelSpec, MatvecConfig, _dp4a, register_kernels, unit_scalars, unit_words, x_scales, x_words

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
    ql_ptr, qh_ptr, sc_ptr, d_ptr, ql_row, qh_row, sc_row, d_row, _, _ = wctx
    H = u // 4
    ql = unit_words(ql_ptr, ql_row, u * 4, 4, umask)
    qh = unit_words(qh_ptr, qh_row, H * 8 + (u % 2) * 4, 4, umask)
    sc0 = unit_scalars(sc_ptr, sc_row, u + 4 * H, umask)
    sc1 = unit_scalars(sc_ptr, sc_row, u + 4 * H, umask, 4)
    return ql, qh, sc0, sc1, unit_scalars(d_ptr, d_row, u // 8, umask)


@triton.jit
def _q6k_decode(w, u, USE_ASM: tl.constexpr):
    # -> the 6-bit weights (bytes) of both nibble halves; d * sc of each, float32 [BN, BU]
    ql, qh, sc0, sc1, d = w
    sh = (2 * ((u % 4) // 2))[None, :, None]
    q0 = (ql & 0x0F0F0F0F) | (((qh >> sh) & 0x03030303) << 4)
    q1 = ((ql >> 4) & 0x0F0F0F0F) | (((qh >> (sh + 4)) & 0x03030303) << 4)
    d = d.to(tl.float32)
    return q0, q1, d * sc0.to(tl.float32), d * sc1.to(tl.float32)


@triton.jit
def _q6k_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    q0, q1, dsc0, dsc1 = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    H = u // 4
    p = (u % 4) // 2
    q = u % 2
    xw = 32 * H + 8 * p + 4 * q
    x0 = x_words(xq_ptr, m, K, xw, umask, q0)
    x1 = x_words(xq_ptr, m, K, xw, umask, q0, 16)
    isum0 = tl.sum(_dp4a(q0, x0, False, USE_ASM), axis=2)
    isum1 = tl.sum(_dp4a(q1, x1, False, USE_ASM), axis=2)
    g16 = 8 * H + 2 * p + q
    g32 = 4 * H + p
    xd0 = x_scales(xd_ptr, m, K // 32, g32, umask)
    xd1 = x_scales(xd_ptr, m, K // 32, g32, umask, 2)
    xs0 = x_scales(xs16_ptr, m, K // 16, g16, umask)
    xs1 = x_scales(xs16_ptr, m, K // 16, g16, umask, 4)
    return dsc0 * (xd0[None, :] * isum0.to(tl.float32) - 32.0 * xs0[None, :]) + dsc1 * (
        xd1[None, :] * isum1.to(tl.float32) - 32.0 * xs1[None, :]
    )


@triton.jit
def _q6k_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    ql_ptr, qh_ptr, sc_ptr, d_ptr = p[0], p[1], p[2], p[3]
    l = tl.arange(0, 32)
    b = s // 8
    h = (s % 8) // 4
    r = s % 4
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


def _default_config(M: int, N: int, K: int) -> MatvecConfig:
    """Measured on an H200 (kernel alone, CUDA graph over rotated weight copies, every candidate at
    M = 1, 4, 16 on down 4096 x 14336 and lm_head 128256 x 4096: benchmarks/results/
    2026-12-02-kernels-sweep-q6_k.json). No register prefetch: since the scales load in the weights'
    layout it only costs registers."""
    if K >= 8192:  # long rows (down): one row per program at M = 1, two warps over 64 units above
        if M == 1:
            return MatvecConfig(block_n=1, block_u=32, num_warps=1)
        return MatvecConfig(block_n=2, block_u=32, num_warps=2)
    return MatvecConfig(block_n=2, block_u=16, num_warps=1)


(SPEC,) = register_kernels(
    KernelSpec(
        "q6_k", UNIT.value, _q6k_load_units, _q6k_decode, _q6k_row_dot, _q6k_dequant_tile,
        plane_dtypes=(torch.int32, torch.int32, None, None),
        default_config=_default_config,
        # bf16 / fp16 x: the matvec at M = 1, 2, w4a16_sync at 3..16, w4a16_mma up to 64. On an H100
        # (down / lm_head; 2026-12-05-w4a16-sync-small-m-h100.json, 2026-12-05-w4a16-sync-masked-x-h100.json):
        # at M = 2 the matvec 24.0 / 166 us against w4a16_sync's 25.4 / 170; at M = 3..5 w4a16_sync
        # 25.5-26.2 / 172-174 against the matvec's 26.0-38.9 / 185-272; at 6..16 26.1-31.1 / 175-217
        # against the matvec's 40.0 / 276 (M = 6) and w4a16_mma's 34.9-35.5 / 245-251 (8..16).
        # float32 x: the matvec up to 6, int8_mma up to 32 (2026-12-04, docs/kernels.md "A few rows").
        matvec_max_m=6,
        w4a16_sync_min_m=3,
        w4a16_sync_max_m=16,
        w4a16_mma_max_m=64,
        int8_mma_max_m=32,
        fused_gemm_max_m=0,
    )
)  # fmt: skip
