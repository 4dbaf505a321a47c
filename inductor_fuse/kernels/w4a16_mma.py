"""Weight-only quantized linears (W4A16; Q6_K's W6A16 the same way) for a few rows of x on the bf16 /
fp16 tensor cores: `w4a16_mma` (the dispatcher runs it for matvec_max_m < M <=
KernelSpec.w4a16_mma_max_m with bf16 or fp16 x, above w4a16_sync_max_m; Q4_K and Q6_K: 17..64).

Each program decodes BLOCK_N weight rows x BLOCK_U 64-weight units of K into x's dtype in
registers and multiplies them with x^T on the tensor cores (the weights are the wgmma's A operand,
from registers; x's rows, padded to 16, its N side):

    out^T[n, m] += sum_k w[n, k] * x[m, k],   w = d*sc * q - dmin*m   (Q4_K, per 32-weight sub-block)

The sub-block's scale and min are applied to the weights, not to the accumulator: one bf16 dot
covers 64 * BLOCK_U weights, where int8_mma (W4A8) scales an int32 result per 32 weights. The
decode works on packed bytes (`tl.inline_asm_elementwise`, four bytes per instance): a nibble ORed
into the mantissa of a magic number (128.0 in bf16, 1024.0 in fp16) is the number plus the nibble,
exactly; one packed fma removes the magic, one more applies the scale and the min
(`fma.rn.bf16x2`). So 8 weights cost 2 PRMT + 2 SHF + 4 LOP3 + 8 HFMA2 per thread. The asm is
elementwise (output element j reads element j of each input only), so its result does not depend on
how Triton groups a thread's elements into instances, whatever layout it gives the tile.

The bytes and the rows of x are read in a K order of the kernel's choosing (a dot's sum does not
care): within a unit, tile column i = 16t + 8h + 2c + p holds the weight k = 32h + 8c + 2t + p
(h: high nibble or low, c: the quad of the MMA fragment, t: the k16 slice, p: the pair). Then the
8 bytes a thread's fragments need are contiguous (one 8-byte shared load, not byte loads) and
each packed pair of decoded values is one fragment register (no repacking).

Rounding: the scale and the min are rounded to x's dtype before the fma, the result once after
it; against float64 on the dequantized weights the bf16 result's error was 1.2-1.5x that of
`F.linear` on the weights dequantized to bf16, fp16's 1.1-1.3x (H200). On the CPU interpreter
(no inline asm) the same kernel decodes in float32 instead (USE_ASM=False).

Q6_K (a unit = a 128-weight half of a block: ql 2 x 32 bytes, qh 32 bytes, four 32-weight
sub-blocks r, an int8 scale per 16 weights): four bytes of each plane per asm instance give the
four sub-blocks' codes, (ql nibble | qh bits << 4) ORed into the magic's mantissa (6 bits fit
bf16's 7), one packed fma makes q - 32 exactly, one more multiplies by the int8 scale; d (per
256 weights and row) multiplies each unit's float32 product before it is added, so the
decode has no f16 load in it (a 2-byte load is not pipelined, and kept the decoded tile out of
the MMA operand layout: a conversion through shared memory every step). Tile column i = 16T + 8e +
2c + p with T = 2t + r // 2, e = r % 2 holds weight k = 32r + 8c + 2t + p.

Programs: BLOCK_N weight rows x BLOCK_M rows of x x SPLIT_K ranges of K (float32 partials summed
by `splitk_reduce` with the bias), the split chosen for a number of programs per SM (default_config).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import f16_pair, interpreting, loop_bound, num_sms, splitk_reduce
from .int8_mma import _mma_prologue, _mma_store, split_k_outputs

_UNIT = {"q4_k": 64, "q6_k": 128}  # weights of K per unit
FORMATS = tuple(_UNIT)  # the formats with a w4a16_mma kernel
MAX_M = 64


def _decode_asm(
    magic: str,
    neg: str,
    one: str,
    ty: str,
    hi_shift: int,
    hi_mask: str,
    scales: tuple = ("$5", "$6", "$9", "$10"),
    mins: tuple = ("$7", "$8", "$11", "$12"),
) -> str:
    """Four qs bytes ($4) -> the low nibbles' weights ($0, $1: two packed pairs) and the high
    nibbles' ($2, $3); `scales` / `mins`: the operands holding the packed scales and minus the mins
    of those four pairs ($5,$6 / $9,$10 and $7,$8 / $11,$12: one per pair of bytes, as
    `inline_asm_elementwise(pack=4)` passes them). The high nibble is shifted to bits 3-6 for bf16
    (7 mantissa bits: bit 7 is the exponent's) and decodes as 8q, left at bits 4-7 for fp16 (16q):
    its scale comes divided by 8 or 16."""
    lines = [
        "{",
        ".reg .b32 t0, t1, h0, h1, q, mg, ng, on;",
        f"mov.b32 mg, {magic}; mov.b32 ng, {neg}; mov.b32 on, {one};",
        "prmt.b32 t0, $4, 0, 0x4140;",  # bytes 0, 1 -> the low bytes of two halves
        "prmt.b32 t1, $4, 0, 0x4342;",  # bytes 2, 3
        f"shr.u32 h0, t0, {hi_shift};",
        f"shr.u32 h1, t1, {hi_shift};",
    ]
    for out, src, mask, s, m in zip(
        ("$0", "$1", "$2", "$3"), ("t0", "t1", "h0", "h1"), ("0x000F000F",) * 2 + (hi_mask,) * 2, scales, mins
    ):
        lines += [
            f"lop3.b32 q, {src}, {mask}, mg, 0xEA;",  # (src & mask) | magic = magic + nibble
            f"fma.rn.{ty} q, q, on, ng;",  # - magic: the nibble (times 8 or 16 for the high one), exact
            f"fma.rn.{ty} {out}, q, {s}, {m};",  # * scale - min
        ]
    return "\n".join(lines + ["}"])


_ASM_BF16 = tl.constexpr(_decode_asm("0x43004300", "0xC300C300", "0x3F803F80", "bf16x2", 1, "0x00780078"))
_ASM_F16 = tl.constexpr(_decode_asm("0x64006400", "0xE400E400", "0x3C003C00", "f16x2", 0, "0x00F000F0"))
_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r,r,r,r,r,r,r,r,r,r")


@triton.jit
def _q4k_decode(b, s_lo, nm_lo, s_hi, nm_hi, DT: tl.constexpr, USE_ASM: tl.constexpr):
    # b uint8 [BN, BU, 32]; s_*, nm_* float32 broadcast to b's shape (s_hi: the scale / 16)
    # -> the low and the high nibbles' weights, DT [BN, BU, 32]
    if USE_ASM:
        # bf16: the high nibble decodes as 8q (bits 3-6), so its scale is (scale / 16) * 2
        if DT == tl.bfloat16:
            s_hi = s_hi * 2
        lo, hi = tl.inline_asm_elementwise(
            _ASM_F16 if DT == tl.float16 else _ASM_BF16,
            _CONSTRAINTS,
            [b, s_lo.to(DT), nm_lo.to(DT), s_hi.to(DT), nm_hi.to(DT)],
            dtype=(DT.value, DT.value),
            is_pure=True,
            pack=4,
        )
    else:
        lo = ((b & 15).to(tl.float32) * s_lo + nm_lo).to(DT)
        hi = ((b & 0xF0).to(tl.float32) * s_hi + nm_hi).to(DT)
    return lo, hi


@triton.jit
def _q4k_w4a16_kernel(
    x_ptr,  # [M, K] bf16 / fp16 (float32 only with USE_ASM=False)
    qs_ptr,  # uint8 [N, K/2]
    sm_ptr,  # int32 [N, K/64]: per unit (sc_lo, m_lo, sc_hi, m_hi)
    dm_ptr,  # int32 [N, K/256]: per block the f16 pair (d, dmin)
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    UNITS_PER_SPLIT,  # a multiple of BLOCK_U
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
    USE_ASM: tl.constexpr,
    UNROLL: tl.constexpr = 1,
):
    units = K // 64
    rn, rm, rn64, rmc, xrow, u0, u1, pid_s, acc = _mma_prologue(M, N, K, units, UNITS_PER_SPLIT, BLOCK_M, BLOCK_N, True)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    l = tl.arange(0, 32)
    j = tl.arange(0, BLOCK_U)
    i = tl.arange(0, BLOCK_U * 64)
    # tile column i = 64 uu + 16t + 8h + 2c + p  <->  weight k = 64 uu + 32h + 8c + 2t + p (module doc)
    kx = (i // 64) * 64 + ((i // 8) % 2) * 32 + ((i // 2) % 4) * 8 + ((i // 16) % 4) * 2 + i % 2
    qrow = tl.multiple_of(rn64 * (K // 2), 16)
    for u in tl.range(loop_bound(u0), loop_bound(u1), BLOCK_U, loop_unroll_factor=UNROLL):
        uu = u + j
        b = tl.load(qs_ptr + qrow[:, None, None] + (uu * 32)[None, :, None] + l[None, None, :])
        smw = tl.load(sm_ptr + (rn64 * (K // 64))[:, None] + uu[None, :])
        # one (d, dmin) word per row and step: BLOCK_U divides 4 and u is a multiple of it, so the
        # step's units lie in one 256-weight block (a [BN, BLOCK_U] load of it was 5% slower)
        dmw = tl.load(dm_ptr + rn64 * (K // 256) + u // 4)[:, None]
        d, dmin = f16_pair(dmw)
        shape: tl.constexpr = (BLOCK_N, BLOCK_U, 32)
        s_lo = tl.broadcast_to((d * (smw & 0xFF).to(tl.float32))[:, :, None], shape)
        nm_lo = tl.broadcast_to((-dmin * ((smw >> 8) & 0xFF).to(tl.float32))[:, :, None], shape)
        s_hi = tl.broadcast_to((d * 0.0625 * ((smw >> 16) & 0xFF).to(tl.float32))[:, :, None], shape)
        nm_hi = tl.broadcast_to((-dmin * ((smw >> 24) & 0xFF).to(tl.float32))[:, :, None], shape)
        lo, hi = _q4k_decode(b, s_lo, nm_lo, s_hi, nm_hi, DT, USE_ASM)
        # bytes l = 8c + 2t + p, both nibbles h -> columns [t, h, c, p]
        lo = tl.reshape(lo, (BLOCK_N, BLOCK_U, 4, 4, 2))
        hi = tl.reshape(hi, (BLOCK_N, BLOCK_U, 4, 4, 2))
        w = tl.reshape(tl.permute(tl.join(lo, hi), (0, 1, 3, 5, 2, 4)), (BLOCK_N, BLOCK_U * 64))
        xt = tl.load(x_ptr + xrow[None, :] + (u * 64 + kx)[:, None])  # [BLOCK_U * 64, BLOCK_M]
        if USE_ASM:
            acc = tl.dot(w, xt, acc)
        else:  # the interpreter's bf16 dot is wrong (triton 3.6 / 3.9); float32 x: full fp32 products
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
    _mma_store(acc, rn, rm, M, N, pid_s, out_ptr, bias_ptr, HAS_BIAS, SPLIT, True)


def _q6k_decode_asm(magic: str, off: str, one: str, ty: str, scales: tuple | None = None) -> str:
    """Four bytes each of ql's first 32 ($8: low nibbles r = 0, high r = 2) and last 32 ($9: r = 1,
    3) and of qh ($10: bits 2r, 2r + 1) -> the four sub-blocks' weights r ($2r, $2r+1: two packed
    pairs each); `scales[2r + p]`: the operand with the packed scales of pair p of sub-block r
    (default $11 + 2r + p, one per pair of bytes, as `inline_asm_elementwise(pack=4)` passes them).
    q = nibble | (2 bits << 4) ORed into the magic's mantissa, minus (magic + 32): q - 32 exactly;
    times the scale."""
    scales = scales or tuple(f"${11 + i}" for i in range(8))
    lines = [
        "{",
        ".reg .b32 a, b, c, ah, bh, c4, c2, cr, t, mg, of, on, nz;",
        f"mov.b32 mg, {magic}; mov.b32 of, {off}; mov.b32 on, {one}; mov.b32 nz, 0x80008000;",
    ]
    for half, sel in ((0, "0x4140"), (1, "0x4342")):  # bytes 0, 1, then 2, 3 -> the low bytes of two halves
        lines += [
            f"prmt.b32 a, $8, 0, {sel};",
            f"prmt.b32 b, $9, 0, {sel};",
            f"prmt.b32 c, $10, 0, {sel};",
            "shr.u32 ah, a, 4;",
            "shr.u32 bh, b, 4;",
            "shl.b32 c4, c, 4;",
            "shl.b32 c2, c, 2;",
            "shr.u32 cr, c, 2;",
        ]
        for r, (low, high) in enumerate((("a", "c4"), ("b", "c2"), ("ah", "c"), ("bh", "cr"))):
            lines += [
                f"lop3.b32 t, {low}, 0x000F000F, mg, 0xEA;",  # (nibble) | magic
                f"lop3.b32 t, {high}, 0x00300030, t, 0xEA;",  # | (qh bits << 4)
                f"fma.rn.{ty} t, t, on, of;",  # - (magic + 32)
                f"fma.rn.{ty} ${2 * r + half}, t, {scales[2 * r + half]}, nz;",  # * scale (+ -0)
            ]
    return "\n".join(lines + ["}"])


_Q6K_ASM_BF16 = tl.constexpr(_q6k_decode_asm("0x43004300", "0xC320C320", "0x3F803F80", "bf16x2"))
_Q6K_ASM_F16 = tl.constexpr(_q6k_decode_asm("0x64006400", "0xE420E420", "0x3C003C00", "f16x2"))
_Q6K_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 11))


@triton.jit
def _q6k_decode(a, b, c, s0, s1, s2, s3, DT: tl.constexpr, USE_ASM: tl.constexpr):
    # a, b: ql bytes 0..31 and 32..63 of the unit, c: its qh bytes, uint8 [BN, 1, 32]; s_r float32
    # (the int8 scale of each element's 16-group) -> the weights of sub-blocks r = 0..3 without d, DT
    if USE_ASM:
        w0, w1, w2, w3 = tl.inline_asm_elementwise(
            _Q6K_ASM_F16 if DT == tl.float16 else _Q6K_ASM_BF16,
            _Q6K_CONSTRAINTS,
            [a, b, c, s0.to(DT), s1.to(DT), s2.to(DT), s3.to(DT)],
            dtype=(DT.value, DT.value, DT.value, DT.value),
            is_pure=True,
            pack=4,
        )
    else:
        a = a.to(tl.int32)
        b = b.to(tl.int32)
        c = c.to(tl.int32)
        w0 = ((((a & 15) | ((c & 3) << 4)) - 32).to(tl.float32) * s0).to(DT)
        w1 = ((((b & 15) | (((c >> 2) & 3) << 4)) - 32).to(tl.float32) * s1).to(DT)
        w2 = ((((a >> 4) | (((c >> 4) & 3) << 4)) - 32).to(tl.float32) * s2).to(DT)
        w3 = ((((b >> 4) | (((c >> 6) & 3) << 4)) - 32).to(tl.float32) * s3).to(DT)
    return w0, w1, w2, w3


@triton.jit
def _q6k_scales(w, k0: tl.constexpr, BLOCK_N: tl.constexpr):
    # the signed bytes k0 (elements 0..15) and k0 + 1 (16..31) of the int32 words w [BN, 1] -> each
    # element's scale, float32 [BN, 1, 32]
    lo = ((w << (24 - 8 * k0)) >> 24).to(tl.float32)
    hi = ((w << (16 - 8 * k0)) >> 24).to(tl.float32)
    return tl.reshape(tl.broadcast_to(tl.join(lo, hi)[:, :, :, None], (BLOCK_N, 1, 2, 16)), (BLOCK_N, 1, 32))


@triton.jit
def _q6k_w4a16_kernel(
    x_ptr,  # [M, K] bf16 / fp16 (float32 only with USE_ASM=False)
    ql_ptr,  # uint8 [N, K/2]
    qh_ptr,  # uint8 [N, K/4]
    sc_ptr,  # int32 [N, K/64]: the int8 scales, four per word
    d_ptr,  # f16 [N, K/256]
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    UNITS_PER_SPLIT,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_ASM: tl.constexpr,
    UNROLL: tl.constexpr = 1,
):
    units = K // 128  # one unit (half a block) per step
    rn, rm, rn64, rmc, xrow, u0, u1, pid_s, acc = _mma_prologue(M, N, K, units, UNITS_PER_SPLIT, BLOCK_M, BLOCK_N, True)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    l = tl.arange(0, 32)
    i = tl.arange(0, 128)
    # column i = 16T + 8e + 2c + p, T = 2t + r // 2, e = r % 2  <->  weight k = 32r + 8c + 2t + p
    T = i // 16
    kx = (2 * (T % 2) + (i // 8) % 2) * 32 + ((i // 2) % 4) * 8 + (T // 2) * 2 + i % 2
    for u in tl.range(loop_bound(u0), loop_bound(u1), loop_unroll_factor=UNROLL):
        qlo = tl.multiple_of(rn64 * (K // 2), 16)[:, None, None] + (u * 64 + l)[None, None, :]
        a = tl.load(ql_ptr + qlo)
        b = tl.load(ql_ptr + qlo + 32)
        c = tl.load(qh_ptr + tl.multiple_of(rn64 * (K // 4), 16)[:, None, None] + (u * 32 + l)[None, None, :])
        sc01 = tl.load(sc_ptr + (rn64 * (K // 64) + 2 * u)[:, None])  # (r0: 0..15, 16..31; r1: ...)
        sc23 = tl.load(sc_ptr + (rn64 * (K // 64) + 2 * u + 1)[:, None])
        d = tl.load(d_ptr + rn64 * (K // 256) + u // 2).to(tl.float32)
        s0 = _q6k_scales(sc01, 0, BLOCK_N)
        s1 = _q6k_scales(sc01, 2, BLOCK_N)
        s2 = _q6k_scales(sc23, 0, BLOCK_N)
        s3 = _q6k_scales(sc23, 2, BLOCK_N)
        w0, w1, w2, w3 = _q6k_decode(a, b, c, s0, s1, s2, s3, DT, USE_ASM)
        shape: tl.constexpr = (BLOCK_N, 1, 4, 4, 2)  # bytes l = 8c + 2t + p: [.., c, t, p]
        w01 = tl.join(tl.reshape(w0, shape), tl.reshape(w1, shape))  # [.., c, t, p, e]
        w23 = tl.join(tl.reshape(w2, shape), tl.reshape(w3, shape))
        w = tl.reshape(tl.permute(tl.join(w01, w23), (0, 1, 3, 6, 5, 2, 4)), (BLOCK_N, 128))  # [.., t, r//2, e, c, p]
        xt = tl.load(x_ptr + xrow[None, :] + (u * 128 + kx)[:, None])  # [128, BLOCK_M]
        if USE_ASM:
            part = tl.dot(w, xt)
        else:  # the interpreter's bf16 dot is wrong (triton 3.6 / 3.9); float32 x: full fp32 products
            part = tl.dot(w.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
        acc += part * d[:, None]
    _mma_store(acc, rn, rm, M, N, pid_s, out_ptr, bias_ptr, HAS_BIAS, SPLIT, True)


@dataclass(frozen=True)
class W4A16Config:
    block_n: int = 128
    block_u: int = 2  # units of K per step (Q4_K; Q6_K: 1)
    num_warps: int = 8
    num_stages: int = 3
    split_k: int = 0  # 0: K split for about `programs_per_sm` programs per SM, at most 8 ways
    programs_per_sm: int = 4
    unroll: int = 1  # K steps per loop pass (tl.range's loop_unroll_factor); 2 measured slower (docs/kernels.md)


def default_config(fmt: str, M: int) -> W4A16Config:
    """Measured on an H200 (kernel alone, CUDA graph over rotated weight copies, Llama-3-8B shapes;
    benchmarks/results/2026-12-04-w4a16-mma-configs.json). Q4_K (M = 4..64): 128 rows, 8 warps,
    3 stages, two units per step up to M = 32, one at M = 64 (the accumulator doubles); K split for
    about 7 programs per SM up to M = 32 (gate_up: 4 ways, 44.6 us at M = 16 against 49.5 with the 2
    ways that 4 programs per SM gave, 2026-12-04-w4a16-mma-split.json), 4 at M = 64. Q6_K (down,
    output head, M = 4..64): 128 rows, 4 warps (5-25% faster than 8), one unit (128 weights) a step."""
    if interpreting():
        return W4A16Config(block_n=16, block_u=1, num_warps=1, num_stages=1, split_k=0)
    if fmt == "q6_k":
        return W4A16Config(block_u=1, num_warps=4)
    if M <= 32:
        return W4A16Config(block_u=2, programs_per_sm=7)
    return W4A16Config(block_u=1)


def w4a16_mma(x: torch.Tensor, planes, bias: torch.Tensor | None, fmt: str, config: W4A16Config | None = None):
    """x [M, K] (contiguous; bf16 / fp16 on CUDA, any float under the interpreter) -> [M, N] in
    x.dtype."""
    if fmt not in FORMATS:
        raise NotImplementedError(f"w4a16_mma: no kernel for {fmt!r} (formats: {FORMATS})")
    M, K = x.shape
    N = planes[0].shape[0]
    if K % 256:
        raise ValueError(f"w4a16_mma: {fmt} needs K % 256 == 0, got K = {K}")
    use_asm = not interpreting()
    if use_asm and x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"w4a16_mma: x must be bf16 or fp16 on the GPU, got {x.dtype}")
    cfg = config or default_config(fmt, M)
    block_u = cfg.block_u if fmt == "q4_k" else 1
    if block_u not in (1, 2, 4):
        raise ValueError(f"w4a16_mma: block_u must be 1, 2 or 4, got {block_u}")
    block_m = min(max(16, triton.next_power_of_2(M)), MAX_M)
    units = K // _UNIT[fmt]
    split = cfg.split_k
    if not split:
        programs = triton.cdiv(N, cfg.block_n) * triton.cdiv(M, block_m)
        split = max(1, min(8, round(cfg.programs_per_sm * num_sms(x.device) / programs), units // (4 * block_u)))
    # K % 256 == 0 and block_u in (1, 2, 4): block_u divides units, and a step's units lie in one block
    per_split, split, out, dst = split_k_outputs(x, N, units, split, step=block_u)
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, block_m), split)
    common = dict(
        HAS_BIAS=bias is not None,
        SPLIT=split > 1,
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        USE_ASM=use_asm,
        UNROLL=cfg.unroll,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    b = bias if bias is not None else out
    if fmt == "q4_k":
        qs, sm, dm = planes
        _q4k_w4a16_kernel[grid](
            x, qs, sm.view(torch.int32), dm.view(torch.int32), b, dst, M, N, K, per_split, BLOCK_U=block_u, **common
        )
    else:
        ql, qh, sc, d = planes
        _q6k_w4a16_kernel[grid](x, ql, qh, sc.view(torch.int32), d, b, dst, M, N, K, per_split, **common)
    if split > 1:
        splitk_reduce(dst, bias, out)
    return out
