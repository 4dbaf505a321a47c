"""IQ4_XS kernels: W4A8 decode matvec (byte-permute grid lookup + signed dp4a) and the weight tile
dequantizer used by the GEMM.

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
    dot_pair,
    prefetch_when_batched,
    register_kernels,
    unit_halves,
    unit_scalars,
    x_scales,
)

UNIT = tl.constexpr(64)  # weights per matvec unit

# KVALUES as int8 bytes, 4 per little-endian int32 word (int32 values of 0xBFAD9881, 0xF6EADDCF,
# 0x26190D01, 0x71594535): word j holds KVALUES[4j..4j+3].
_KV_W0: tl.constexpr = tl.constexpr(-1079142271)
_KV_W1: tl.constexpr = tl.constexpr(-152379953)
_KV_W2: tl.constexpr = tl.constexpr(639175937)
_KV_W3: tl.constexpr = tl.constexpr(1901675829)

# ---------------------------------------------------------------------------------------------
# Grid lookup of the 8 codes of a word at once, with byte permutes (as llama.cpp's
# get_int_from_table_16, minus its final reorder, which the kernel order of qs makes unneeded).
# PTX prmt.b32 d, a, b, s: byte k of d is byte (s >> 4k) & 7 of the 8 bytes {b:a}, its sign
# replicated over the byte when bit 3 of that selector nibble is set. With the grid in 4 words
# T0..T3 and code k of w in nibble k:
#   c = w & 0x77777777 (a set msb would sign-replicate), ch = c >> 16
#   a0 = prmt(T0, T1, c): right for codes 0-3 that are < 8;  b0 = prmt(T2, T3, c): for those >= 8
#   m0 = prmt(w << 4, w, 0xD9C8): byte k = 0xFF where code k >= 8 (the msbs, sign-replicated)
#   lo = (a0 & ~m0) | (b0 & m0)  (one lop3)               hi likewise from ch and 0xFBEA
# 11 instructions for 8 weights. The table words are inline-asm operands from registers that the
# kernel computes as (rows_c >> 31) ^ T: zero bits ptxas cannot prove zero, so the words stay in
# registers through the K loop; as immediates ptxas re-copied them from uniform registers before
# every permute (sm_90 SASS of the matvec loop: 211 -> 183 instructions per 64 weights).
# ---------------------------------------------------------------------------------------------


_LOOKUP_PTX: tl.constexpr = tl.constexpr(
    "{\n"
    ".reg .b32 c, ch, a0, b0, a1, b1, w4, m0, m1;\n"
    "and.b32 c, $2, 0x77777777;\n"
    "shr.u32 ch, c, 16;\n"
    "prmt.b32 a0, $3, $4, c;\n"
    "prmt.b32 b0, $5, $6, c;\n"
    "prmt.b32 a1, $3, $4, ch;\n"
    "prmt.b32 b1, $5, $6, ch;\n"
    "shl.b32 w4, $2, 4;\n"
    "prmt.b32 m0, w4, $2, 0xD9C8;\n"
    "prmt.b32 m1, w4, $2, 0xFBEA;\n"
    "lop3.b32 $0, a0, b0, m0, 0xD8;\n"
    "lop3.b32 $1, a1, b1, m1, 0xD8;\n"
    "}"
)  # $0, $1: lo, hi; $2: w; $3..$6: T0..T3


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
def _iq4nl_lookup(w, t0, t1, t2, t3, USE_ASM: tl.constexpr):
    # w: int32 (8 codes, nibble k = code k); t0..t3: the grid words, in w's shape
    # -> lo, hi int32: the int8 KVALUES of codes 0-3 (lo) and 4-7 (hi)
    if USE_ASM:
        lo, hi = tl.inline_asm_elementwise(
            _LOOKUP_PTX,
            "=r,=r,r,r,r,r,r",
            [w, t0, t1, t2, t3],
            dtype=(tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )
    else:
        c = w & 0x77777777
        ch = c >> 16  # c >= 0: the arithmetic shift is the logical one
        w4 = w << 4
        m0 = _prmt(w4, w, 0xD9C8)
        m1 = _prmt(w4, w, 0xFBEA)
        lo = (_prmt(t0, t1, c) & ~m0) | (_prmt(t2, t3, c) & m0)
        hi = (_prmt(t0, t1, ch) & ~m1) | (_prmt(t2, t3, ch) & m1)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Matvec. A unit is two sub-blocks u = (2u, 2u + 1): 32 qs bytes loaded as two 16-byte halves of
# one layout (wa: sub-block 2u, wb: 2u + 1), so one thread owns a unit, as in Q4_K. Word t of a
# half gives (lookup) the int8 grid values of elements 4t..4t+3 and 16+4t..16+4t+3: activation
# words t and 4 + t of its sub-block. With x quantized per 32-group (xq, xd):
#   out[m, n] += (d * sc_a) * xd_a * sum dp4a_s8(grid(wa), x_a) + (d * sc_b) * xd_b * sum dp4a_s8(grid(wb), x_b)
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
    z = (rows_c >> 31)[:, None, None]  # zeros (rows_c >= 0), per thread and opaque: see _iq4nl_lookup
    return wa, wb, scw, d, z


@triton.jit
def _iq4xs_decode(w, u, USE_ASM: tl.constexpr):
    # -> the grid values (int8 x 4 words) of both sub-blocks' low and high codes; d * sc of each
    wa, wb, scw, d, z = w
    z = tl.broadcast_to(z, wa.shape)
    t0, t1, t2, t3 = z ^ _KV_W0, z ^ _KV_W1, z ^ _KV_W2, z ^ _KV_W3
    ga_lo, ga_hi = _iq4nl_lookup(wa, t0, t1, t2, t3, USE_ASM)
    gb_lo, gb_hi = _iq4nl_lookup(wb, t0, t1, t2, t3, USE_ASM)
    scw = scw.to(tl.int32)  # sign-extends sc_b
    d = d.to(tl.float32)
    return ga_lo, ga_hi, gb_lo, gb_hi, d * ((scw << 24) >> 24).to(tl.float32), d * (scw >> 8).to(tl.float32)


@triton.jit
def _iq4xs_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    ga_lo, ga_hi, gb_lo, gb_hi, dsc_a, dsc_b = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    s_a, s_b = dot_pair(ga_lo, ga_hi, gb_lo, gb_hi, xq_ptr, m, K, u * 16, umask, True, USE_ASM)
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
def _iq4xs_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    qs_ptr, sc_ptr, d_ptr = p[0], p[1], p[2]
    i = tl.arange(0, 32)
    j = i % 4
    byte = (s * 16)[:, None] + (4 * ((i % 16) // 4) + 2 * (i // 16) + j // 2)[None, :]  # [S, 32]
    qs_u8 = qs_ptr.to(tl.pointer_type(tl.uint8))
    b = tl.load(qs_u8 + tl.multiple_of(rows64 * (K // 2), 16)[:, None, None] + byte[None, :, :]).to(tl.int32)
    code = (b >> (4 * (j % 2))[None, None, :]) & 0xF
    word = tl.where(
        code < 8, tl.where(code < 4, _KV_W0, _KV_W1), tl.where(code < 12, _KV_W2, _KV_W3)
    )  # int32 [BN, S, 32]
    v = (word << (24 - 8 * (code & 3))) >> 24
    sc_i8 = sc_ptr.to(tl.pointer_type(tl.int8))
    sc = tl.load(sc_i8 + rows64[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    d = tl.load(d_ptr + rows[:, None] * (K // 256) + (s // 8)[None, :]).to(tl.float32)
    return (d * sc)[:, :, None] * v.to(tl.float32)  # [BN, BK // 32, 32]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

# The matvec default: not measured yet; Q4_K's (same unit, same 32-byte loads per thread).
(SPEC,) = register_kernels(
    KernelSpec("iq4_xs", UNIT.value, _iq4xs_load_units, _iq4xs_decode, _iq4xs_row_dot, _iq4xs_dequant_tile,
               plane_dtypes=(torch.int32, torch.int16, None), default_config=prefetch_when_batched(2, 16, num_warps=1))
)  # fmt: skip
