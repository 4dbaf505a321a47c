"""IQ4_XS kernels: W4A8 decode matvec (byte-permute grid lookup into two half tables, chained
signed dp4a) and the weight tile dequantizer used by the GEMM.

Planes (docs/design.md contract; quant/iq4_xs.py), weight [N, K], K % 256 == 0, sub-block s of 32:
    qs uint8 [N, K/2]    16 bytes per sub-block, kernel order: int32 word t (bytes 16s + 4t ..)
                         holds codes 4t..4t+3 in nibbles 0-3 and codes 16+4t..16+4t+3 in nibbles 4-7
    sc int8  [N, K/32]   ls - 32 per sub-block
    d  f16   [N, K/256]  per super-block
    w[n, 32s + i] = (d[s // 8] * sc[s]) * KVALUES[code i],
    KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    KernelSpec,
    _dp4a,
    prefetch_when_batched,
    register_kernels,
    unit_halves,
    unit_scalars,
    x_group,
    x_scales,
)

UNIT = tl.constexpr(64)  # weights per matvec unit

# KVALUES as int8 bytes, 4 per little-endian int32 word (int32 values of 0xBFAD9881, 0xF6EADDCF,
# 0x26190D01, 0x71594535): word j holds KVALUES[4j..4j+3]. (The GEMM's dequantized tile reads them.)
_KV_W0: tl.constexpr = tl.constexpr(-1079142271)
_KV_W1: tl.constexpr = tl.constexpr(-152379953)
_KV_W2: tl.constexpr = tl.constexpr(639175937)
_KV_W3: tl.constexpr = tl.constexpr(1901675829)
# The matvec's two half tables: TA = KVALUES[0..7] (= _KV_W0, _KV_W1, every byte negative) and
# TB = KVALUES[8..15] + 1 (0x271A0E02, 0x725A4636, every byte positive).
_TB_W0: tl.constexpr = tl.constexpr(656018946)
_TB_W1: tl.constexpr = tl.constexpr(1918518838)

# ---------------------------------------------------------------------------------------------
# Grid lookup of the 8 codes of a word, as two byte permutes per 4 codes and no select.
# PTX prmt.b32 d, a, b, s: byte k of d is byte (s >> 4k) & 7 of the 8 bytes {b:a}, its sign
# replicated over the byte when bit 3 of that selector nibble is set. With code k of w in nibble k:
#   A = prmt(TA0, TA1, w):              code < 8: KVALUES[code];  code >= 8: sign of a TA byte = -1
#   B = prmt(TB0, TB1, w ^ 0x88888888): code >= 8: KVALUES[code] + 1;  code < 8: sign of a TB byte = 0
# so A + B (bytewise, as int8) is KVALUES[code] for every code. The sum is never formed: dp4a is
# linear, dp4a(A, x) + dp4a(B, x) is the grid's dot with x, and the two dp4a chain through the
# accumulator. Codes 0-3 use the selector's low 16 bits, codes 4-7 the word shifted right by 16:
# 3 integer ops and 4 permutes per 8 codes (the select of llama.cpp's get_int_from_table_16 and
# of this kernel before, lop3 on a mask built by two more permutes, costs 4 more), against 2 more
# dp4a per 8 codes and row of x. The table words are inline-asm operands from registers that the
# kernel computes as (rows_c >> 31) ^ T: zero bits ptxas cannot prove zero, so the words stay in
# registers through the K loop; as immediates ptxas re-copied them from uniform registers before
# every permute.
# ---------------------------------------------------------------------------------------------


_LOOKUP_PTX: tl.constexpr = tl.constexpr(
    "{\n"
    ".reg .b32 wh, wx, wxh;\n"
    "shr.u32 wh, $4, 16;\n"
    "xor.b32 wx, $4, 0x88888888;\n"
    "shr.u32 wxh, wx, 16;\n"
    "prmt.b32 $0, $5, $6, $4;\n"
    "prmt.b32 $1, $7, $8, wx;\n"
    "prmt.b32 $2, $5, $6, wh;\n"
    "prmt.b32 $3, $7, $8, wxh;\n"
    "}"
)  # $0, $1: A, B of codes 0-3; $2, $3: A, B of codes 4-7; $4: w; $5, $6: TA0, TA1; $7, $8: TB0, TB1

# dp4a(a0, x0) + dp4a(b0, x0) + dp4a(a1, x1) + dp4a(b1, x1), chained through the accumulator
_DP4A4_PTX: tl.constexpr = tl.constexpr(
    "dp4a.s32.s32 $0, $1, $3, 0;\n"
    "dp4a.s32.s32 $0, $2, $3, $0;\n"
    "dp4a.s32.s32 $0, $4, $6, $0;\n"
    "dp4a.s32.s32 $0, $5, $6, $0;"
)  # $1, $2: A, B of codes 0-3, $3 their x word; $4, $5: of codes 4-7, $6 their x word


@triton.jit
def _prmt(a, b, s):
    # PTX prmt.b32 (default mode), emulated for the interpreter; int32 tensors of one shape
    r = tl.zeros_like(a)
    for k in tl.static_range(4):
        sel = (s >> (4 * k)) & 0xF
        sh = 8 * (sel & 3)
        byte = tl.where((sel & 4) == 0, (a >> sh) & 0xFF, (b >> sh) & 0xFF)
        byte = tl.where((sel & 8) == 0, byte, tl.where((byte & 0x80) == 0, 0, 0xFF))
        r = r | (byte << (8 * k))
    return r


@triton.jit
def grid_tables(z, like):
    # the half tables' words TA0, TA1, TB0, TB1 in the shape of `like`, from z: int32 zeros [BN, 1, 1]
    # that ptxas cannot prove zero ((rows_c >> 31)[:, None, None]: see above)
    z = tl.broadcast_to(z, like.shape)
    return z ^ _KV_W0, z ^ _KV_W1, z ^ _TB_W0, z ^ _TB_W1


@triton.jit
def iq4nl_lookup(w, ta0, ta1, tb0, tb1, USE_ASM: tl.constexpr):
    # w: int32 (8 codes, nibble k = code k); ta0..tb1: the half tables' words, in w's shape
    # -> a_lo, b_lo, a_hi, b_hi int32: A and B (see above) of codes 0-3 (lo) and 4-7 (hi)
    if USE_ASM:
        a_lo, b_lo, a_hi, b_hi = tl.inline_asm_elementwise(
            _LOOKUP_PTX,
            "=r,=r,=r,=r,r,r,r,r,r",
            [w, ta0, ta1, tb0, tb1],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )
    else:
        wx = w ^ -2004318072  # 0x88888888
        a_lo = _prmt(ta0, ta1, w)
        b_lo = _prmt(tb0, tb1, wx)
        a_hi = _prmt(ta0, ta1, (w >> 16) & 0xFFFF)
        b_hi = _prmt(tb0, tb1, (wx >> 16) & 0xFFFF)
    return a_lo, b_lo, a_hi, b_hi


@triton.jit
def grid_dot(g, xg, USE_ASM: tl.constexpr):
    # int32 [BLOCK_N, BLOCK_U]: one sub-block's 32 grid values (g: A, B words of its codes 0-3 and
    # 4-7, [BLOCK_N, BLOCK_U, 4] each) dotted with its x group xg (x_group: words 0-3, 4-7)
    a_lo, b_lo, a_hi, b_hi = g
    x_lo, x_hi = xg
    if USE_ASM:
        s = tl.inline_asm_elementwise(
            _DP4A4_PTX, "=r,r,r,r,r,r,r", [a_lo, b_lo, x_lo, a_hi, b_hi, x_hi], dtype=tl.int32, is_pure=True, pack=1
        )
    else:
        s = _dp4a(a_lo, x_lo, True, False) + _dp4a(b_lo, x_lo, True, False)
        s += _dp4a(a_hi, x_hi, True, False) + _dp4a(b_hi, x_hi, True, False)
    return tl.sum(s, axis=2)


# ---------------------------------------------------------------------------------------------
# Matvec. A unit is two sub-blocks u = (2u, 2u + 1): 32 qs bytes loaded as two 16-byte halves of
# one layout (wa: sub-block 2u, wb: 2u + 1), so one thread owns a unit, as in Q4_K. Word t of a
# half gives (lookup) the grid values of elements 4t..4t+3 and 16+4t..16+4t+3: activation words
# t and 4 + t of its sub-block. With x quantized per 32-group (xq, xd):
#   out[m, n] += (d * sc_a) * xd_a * grid_dot(wa, x_a) + (d * sc_b) * xd_b * grid_dot(wb, x_b)
# The grid has no offset (no zero point, no min): no xs32 term. sc_a, sc_b are the unit's int16
# word of sc; d is the super-block's (u // 4).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _iq4xs_load_units(wctx, u, umask):
    # -> wa, wb int32 [BN, BU, 4] (sub-blocks 2u, 2u + 1); scw int16 [BN, BU] (sc_a | sc_b << 8);
    #    d f16 [BN, BU]; z int32 [BN, 1, 1] zeros
    qs_ptr, sc_ptr, d_ptr, _, qs_row, sc_row, d_row, _, rows_c, _ = wctx
    wa, wb = unit_halves(qs_ptr, qs_row, u, umask)
    scw = unit_scalars(sc_ptr, sc_row, u, umask)
    d = unit_scalars(d_ptr, d_row, u // 4, umask)
    z = (rows_c >> 31)[:, None, None]  # zeros (rows_c >= 0), per thread and opaque: see iq4nl_lookup
    return wa, wb, scw, d, z


@triton.jit
def _iq4xs_decode(w, u, USE_ASM: tl.constexpr):
    # -> the A, B words (see the lookup) of both sub-blocks; d * sc of each
    wa, wb, scw, d, z = w
    ta0, ta1, tb0, tb1 = grid_tables(z, wa)
    ga = iq4nl_lookup(wa, ta0, ta1, tb0, tb1, USE_ASM)
    gb = iq4nl_lookup(wb, ta0, ta1, tb0, tb1, USE_ASM)
    scw = scw.to(tl.int32)  # sign-extends sc_b
    d = d.to(tl.float32)
    return ga, gb, d * ((scw << 24) >> 24).to(tl.float32), d * (scw >> 8).to(tl.float32)


@triton.jit
def _iq4xs_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    ga, gb, dsc_a, dsc_b = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    x_a = x_group(xq_ptr, m, K, u * 16, umask, ga[0])  # both groups loaded before the first dp4a
    x_b = x_group(xq_ptr, m, K, u * 16, umask, ga[0], 8)
    s_a = grid_dot(ga, x_a, USE_ASM)
    s_b = grid_dot(gb, x_b, USE_ASM)
    xd_a = x_scales(xd_ptr, m, K // 32, 2 * u, umask)
    xd_b = x_scales(xd_ptr, m, K // 32, 2 * u, umask, 1)
    return dsc_a * (xd_a[None, :] * s_a.to(tl.float32)) + dsc_b * (xd_b[None, :] * s_b.to(tl.float32))


# ---------------------------------------------------------------------------------------------
# Weight tile for the GEMM / dequant kernel, float32 [BN, BK/32, 32]: sub-block s = k // 32,
# i = k % 32 = 16h + 4t + j: nibble j % 2 of qs byte 16s + 4t + 2h + j // 2; the grid value is
# byte (code & 3) of KVALUES word code >> 2, sign-extended. The planes as stored (qs uint8,
# sc int8; the pointers are cast, so int32 / int16 views read the same bytes).
# ---------------------------------------------------------------------------------------------


@triton.jit
def iq4nl_tile_values(qs_ptr, rows64, s, K):
    # qs uint8 [N, K/2] in kernel order (IQ4_XS's and IQ4_NL's) -> the grid values of the
    # 32-blocks s [S] of rows64 [BN], int32 [BN, S, 32]
    i = tl.arange(0, 32)
    j = i % 4
    byte = (s * 16)[:, None] + (4 * ((i % 16) // 4) + 2 * (i // 16) + j // 2)[None, :]  # [S, 32]
    qs_u8 = qs_ptr.to(tl.pointer_type(tl.uint8))
    b = tl.load(qs_u8 + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + byte[None, :, :]).to(tl.int32)
    code = (b >> (4 * (j % 2))[None, None, :]) & 0xF
    word = tl.where(
        code < 8, tl.where(code < 4, _KV_W0, _KV_W1), tl.where(code < 12, _KV_W2, _KV_W3)
    )  # int32 [BN, S, 32]
    return (word << (24 - 8 * (code & 3))) >> 24


@triton.jit
def _iq4xs_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    qs_ptr, sc_ptr, d_ptr = p[0], p[1], p[2]
    v = iq4nl_tile_values(qs_ptr, rows64, s, K)
    sc_i8 = sc_ptr.to(tl.pointer_type(tl.int8))
    sc = tl.load(sc_i8 + rows64[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    d = tl.load(d_ptr + rows[:, None] * (K // 256) + (s // 8)[None, :]).to(tl.float32)
    return (d * sc)[:, :, None] * v.to(tl.float32)  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

# The matvec default: Q4_K's (same unit, same 32-byte loads per thread), also the fastest of every
# candidate at M = 1 (benchmarks/results/2026-12-02-kernels-sweep.json).
(SPEC,) = register_kernels(
    KernelSpec("iq4_xs", UNIT.value, _iq4xs_load_units, _iq4xs_decode, _iq4xs_row_dot, _iq4xs_dequant_tile,
               plane_dtypes=(torch.int32, torch.int16, None), default_config=prefetch_when_batched(2, 16, num_warps=1))
)  # fmt: skip
