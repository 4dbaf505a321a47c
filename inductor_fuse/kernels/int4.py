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

from ._common import KernelSpec, MatvecConfig, block32_row_dot, register_kernels, unit_scalars, unit_words

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. The activation is quantized INTERLEAVED (see act_quant), so that qs word e of a 32-unit
# (elements 8e..8e+7) meets x word e with its low nibbles (even elements) and x word 4 + e with
# its high nibbles (odd elements). Per 32 weights:
#   out[m, n] += scale * (xd * dp4a-sum - zero * xs32)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _int4_load_units(wctx, u, umask):
    # -> w_lo, w_hi int32 [BN, BU, 4]: the even / odd elements' nibbles (bytes); scale and zero
    #    f32 [BN, BU] (of each unit's group)
    qs_ptr, scale_ptr, zero_ptr, _, qs_row, g_row, _, _, _, GROUP = wctx
    w = unit_words(qs_ptr, qs_row, u * 4, 4, umask)  # [BN, BU, 4]
    sc = unit_scalars(scale_ptr, g_row, u * 32 // GROUP, umask).to(tl.float32)
    z = unit_scalars(zero_ptr, g_row, u * 32 // GROUP, umask).to(tl.float32)
    return w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F, sc, z


@triton.jit
def _int4_decode(w, u, USE_ASM: tl.constexpr):
    return w  # decoded by _int4_load_units


@triton.jit
def _int4_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    qs_ptr, scale_ptr, zero_ptr = p[0], p[1], p[2]
    i = tl.arange(0, 32)
    k = (s * 32)[:, None] + i[None, :]  # [S, 32]
    qb = tl.load(qs_ptr + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + (k // 2)[None, :, :]).to(tl.int32)
    q = (qb >> ((i % 2) * 4)[None, None, :]) & 0xF
    gi = rows[:, None] * (K // GROUP) + (s * 32 // GROUP)[None, :]
    sc = tl.load(scale_ptr + gi).to(tl.float32)
    z = tl.load(zero_ptr + gi).to(tl.float32)
    return (q.to(tl.float32) - z[:, :, None]) * sc[:, :, None]


SPECS = register_kernels(
    *(
        KernelSpec(
            f"int4_g{group}", UNIT.value, _int4_load_units, _int4_decode, block32_row_dot,
            _int4_dequant_tile, plane_dtypes=(torch.int32, None, None),
            default_config=MatvecConfig(block_n=2, block_u=32, num_warps=2), interleave=True, group=group,
        )
        for group in (32, 64, 128)
    )
)  # fmt: skip
