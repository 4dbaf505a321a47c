"""`w4a16_sync`: W4A16 (Q6_K: W6A16) for 1-16 rows of x on mma.sync, reading the Q4_K / Q6_K
planes as they are (GGUF order). Dispatched for Q4_K and Q6_K at M = 3..16 with bf16 / fp16
x (`KernelSpec.w4a16_sync_min_m` / `w4a16_sync_max_m`); `INDUCTOR_FUSE_SMALL_M=sync` routes every
bf16 / fp16 call of up to 16 rows here, `=off` none (docs/kernels.md "A few rows"; measured by
benchmarks/bench_w4a16_sync.py).

Written in Gluon (`triton.experimental.gluon`), where the kernel picks its register layouts:

- The weights are the A operand of m16n8k16 bf16 / fp16 MMAs (`mma_v2`, k_width 8), x's rows (8 or
  16) the B operand. The weight words go from global memory to registers; x too, or through
  shared memory (below).
- The A layout gives lane 4g + t of a warp rows g and g + 8 of its 16, and 64 of the 256 columns of
  a block. The kernel orders k (a dot's sum does not care) so that those are lane t's bytes of the
  row: Q4_K qs bytes 32t..32t+31 (sub-blocks 2t and 2t + 1, one scale word); Q6_K 16 bytes of each
  half of ql and 16 of qh (weights 128(t // 2) + 32r + 16(t % 2) + i, one 16-group of each
  sub-block r). So the four lanes of a row read its whole lines of the block.
- The decode is w4a16_mma's asm, one word of each plane per instance (`_decode_asm`,
  `_q6k_decode_asm`): the code ORed into a magic number's mantissa, one packed fma removes the
  magic, one more applies the scale (and Q4_K's min). Its packed outputs are MMA operand
  registers: `join` / `reshape` / `permute` make them the [rows, 256] A tile, whose conversion to
  the MMA operand layout moves no data (`convert_layout(..., assert_trivial=True)`); x's tile
  likewise (`A_*` / `B_*` below say the column order).
- Q6_K's d multiplies its int8 scales before the decode (one rounding of d * sc to x's dtype).
- One 256-weight block a loop step; the next block's words are loaded before this one is decoded.
  K split across programs (float32 partials summed by `splitk_reduce`, which adds the bias; else
  the store adds it).
- x (every warp needs all of a block's tile; rows past M are masked: zeros): by default
  (`SyncConfig.xstages` 0) each lane loads its own 64 values of k from global memory, 16 bytes at a
  time at 128-byte strides. Those loads were most of the L1 traffic: Nsight Compute on gate_up at
  M = 16 (4 warps) had the L1 pipe 91% busy and DRAM 18%, and the loads asked for 20.4 M sectors
  against 5.8 M at M = 1 for the same weights (docs/kernels.md). With xstages >= 2 the tile is
  copied once a program by cp.async, in whole lines of x, into a ring of that many tiles in shared
  memory, and each lane reads its own row back (XOR-swizzled in 16-byte units, so that a quarter
  warp reads 8 bank groups). Written for that profile (sm_90, Q4_K: 128 / 125 registers at M = 8 /
  16, against 126 / 168); on an H200 it cut gate_up at M = 16 from 110.3 to 29.3 us (4 warps of one
  tile, no split), and it is the default from M = 2 (`default_config`).

`reference` is the same tensor program in pure torch (the words, the joins, reshapes and permutes,
the decode with the kernel's roundings, a float64 product): tests/kernels/test_w4a16_sync.py checks
it against each format's dequantizer on the CPU, which checks the k order; on the GPU the kernel
against it. Gluon kernels do not run under Triton's interpreter: the CPU suite tests the
reference only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from ._common import num_sms, splitk_reduce
from .w4a16_mma import _decode_asm, _q6k_decode_asm

# cp.async global -> shared: `async_load` since triton 3.7, `async_copy_global_to_shared` before
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

# The decodes of w4a16_mma, one word of each plane per instance. Q4_K: $5 / $7 the packed scale
# pair of the low / high nibbles (a word's bytes are all in the same two sub-blocks), $6 / $8 minus
# the mins. Q6_K: $11 + r the packed scale pair of sub-block r (a lane's bytes are in one 16-group
# of each).
_Q4K_WORD = dict(scales=("$5", "$5", "$7", "$7"), mins=("$6", "$6", "$8", "$8"))
_Q4K_BF16 = gl.constexpr(_decode_asm("0x43004300", "0xC300C300", "0x3F803F80", "bf16x2", 1, "0x00780078", **_Q4K_WORD))
_Q4K_F16 = gl.constexpr(_decode_asm("0x64006400", "0xE400E400", "0x3C003C00", "f16x2", 0, "0x00F000F0", **_Q4K_WORD))
_Q6K_WORD = tuple(f"${11 + i // 2}" for i in range(8))
_Q6K_BF16 = gl.constexpr(_q6k_decode_asm("0x43004300", "0xC320C320", "0x3F803F80", "bf16x2", _Q6K_WORD))
_Q6K_F16 = gl.constexpr(_q6k_decode_asm("0x64006400", "0xE420E420", "0x3C003C00", "f16x2", _Q6K_WORD))

# ---------------------------------------------------------------------------------------------
# The column order of the tiles
# ---------------------------------------------------------------------------------------------
# Tile column 64b + 32h + 8t + 4n + 2j1 + j0 (t: lane % 4). Within a lane's 8 columns of a 64, the
# MMA takes (2i, 2i + 1) and the same pair 32 columns on as one instruction's operand registers: h
# next to j0 in x's runs makes those two one 8-byte pair of x's 16-byte loads (no moves).
# - Q4_K: the weight k = 64t + 32n + 8b + 4j1 + 2h + j0 of the block: byte 8b + 4j1 + 2h + j0 of lane
#   t's 32, nibble n. The decoded words [.., t, w = 2b + j1, j0, h, n], x's runs [.., t, n, b, j1, h, j0].
# - Q6_K: k = 128(t // 2) + 32r + 16(t % 2) + 4b + 2h + j0 with r = 2j1 + n: byte 4b + 2h + j0 of
#   lane t's 16 of each plane, sub-block r. The decoded words [.., t, w = b, j0, h, n, j1], x's runs
#   [.., t, j1, n, b, h, j0].
# Both are permuted to [rows, (b, h, t, n, j1, j0)] and [(b, h, t, n, j1, j0), rows of x].
A_SHAPE = {"q4_k": (2, 8, 4, 4, 2, 2, 2, 2), "q6_k": (2, 8, 4, 4, 2, 2, 2, 2)}  # after the rows' (R, W)
A_PERM = {
    "q4_k": (0, 1, 2, 3, 5, 8, 4, 9, 6, 7),  # of (R, W, h8, g, t, b, j1, j0, h, n)
    "q6_k": (0, 1, 2, 3, 5, 7, 4, 8, 9, 6),  # of (R, W, h8, g, t, b, j0, h, n, j1)
}
B_SHAPE = {"q4_k": (8, 4, 2, 4, 2, 2, 2), "q6_k": (8, 4, 2, 2, 4, 2, 2)}  # after NT
B_PERM = {
    "q4_k": (4, 6, 2, 3, 5, 7, 0, 1),  # of (NT, g, t, n, b, j1, h, j0)
    "q6_k": (5, 6, 2, 4, 3, 7, 0, 1),  # of (NT, g, t, j1, n, b, h, j0)
}
FMTS = tuple(A_SHAPE)


def _round(v: torch.Tensor, dtype) -> torch.Tensor:
    return v.to(dtype).double()


def _reference_q4k(planes, lead, dt):
    # -> the decoded weights [*lead, t, w, j0, h, n]
    qs, sm, dm = planes
    words = qs.contiguous().view(torch.int32).view(*lead, 4, 8).to(torch.int64)  # [.., t, w]
    smw = sm.contiguous().view(torch.int32).view(*lead, 4, 1).to(torch.int64)  # [.., t, 1]
    dmw = dm.contiguous().view(torch.int32).view(*lead, 1, 1).to(torch.int64)
    d = (dmw & 0xFFFF).to(torch.int16).view(torch.float16).double()
    dmin = ((dmw >> 16) & 0xFFFF).to(torch.int16).view(torch.float16).double()
    s_lo, nm_lo = _round(d * (smw & 0xFF), dt), _round(-dmin * ((smw >> 8) & 0xFF), dt)
    f = {torch.bfloat16: 8, torch.float16: 16}.get(dt, 1)  # the asm's high nibble is 8q (bf16) or 16q (fp16)
    s_hi, nm_hi = _round(d / f * ((smw >> 16) & 0xFF), dt), _round(-dmin * ((smw >> 24) & 0xFF), dt)
    byte = [(words >> (8 * i)) & 0xFF for i in range(4)]
    lo = [_round((v & 15) * s_lo + nm_lo, dt) for v in byte]
    hi = [_round((v >> 4) * f * s_hi + nm_hi, dt) for v in byte]
    pairs = lambda v: [torch.stack(v[0:2], -1), torch.stack(v[2:4], -1)]  # noqa: E731  (bytes 0-1, 2-3)
    return torch.stack([torch.stack(pairs(lo), -1), torch.stack(pairs(hi), -1)], -1)


def _reference_q6k(planes, lead, dt):
    # -> the decoded weights [*lead, t, w, j0, h, n, j1]
    ql, qh, sc, d = planes
    t, four = torch.arange(4, device=ql.device), torch.arange(4, device=ql.device)
    lw = ql.contiguous().view(torch.int32).view(*lead, 32)
    hw = qh.contiguous().view(torch.int32).view(*lead, 16)
    base = ((t // 2) * 16 + (t % 2) * 4)[:, None] + four  # [t, w]: ql words of lane t
    a, b = lw[..., base].to(torch.int64), lw[..., base + 8].to(torch.int64)
    c = hw[..., ((t // 2) * 8 + (t % 2) * 4)[:, None] + four].to(torch.int64)
    scb = sc.contiguous().view(*lead, 16).double()  # the int8 scales of the block's 16-groups
    groups = (t // 2 * 8 + t % 2)[:, None] + 2 * four  # [t, r]: sub-block r's group of lane t
    s = _round(d.contiguous().view(*lead, 1, 1).double() * scb[..., groups], dt)  # [.., t, r]
    out = []
    for r, (src, lo_shift, hi_shift) in enumerate(((a, 0, 0), (b, 0, 2), (a, 4, 4), (b, 4, 6))):
        vals = []
        for i in range(4):  # the word's bytes
            q = ((src >> (8 * i + lo_shift)) & 15) | (((c >> (8 * i + hi_shift)) & 3) << 4)
            vals.append(_round((q - 32) * s[..., r : r + 1], dt))
        out.append(torch.stack([torch.stack(vals[0:2], -1), torch.stack(vals[2:4], -1)], -1))  # [.., w, j0, h]
    return torch.stack([torch.stack(out[0:2], -1), torch.stack(out[2:4], -1)], -1)  # r = 2j1 + n


def _reference_x(x: torch.Tensor, fmt: str, NT: int, nb: int) -> torch.Tensor:
    # x's rows (past M: zeros) -> [nb, NT, *B_SHAPE] as the kernel loads them
    M = x.shape[0]
    xr = torch.cat([x, x.new_zeros(8 * NT - M, x.shape[1])])
    if fmt == "q4_k":
        return xr.view(NT, 8, nb, 4, 2, 32).movedim(2, 0).reshape(nb, NT, *B_SHAPE[fmt])
    # k = 128(t // 2) + 32r + 16(t % 2) + i
    xr = xr.view(NT, 8, nb, 2, 4, 2, 16).permute(2, 0, 1, 3, 5, 4, 6)  # [nb, NT, g, t // 2, t % 2, r, i]
    return xr.reshape(nb, NT, *B_SHAPE[fmt])


def reference(x: torch.Tensor, planes, fmt: str = "q4_k", num_warps: int = 4, reps: int = 1, decode_dtype=None):
    """The kernel's tensor program in torch, every program and block at once: out [M, N] float64.

    x [M, K] bf16 / fp16; planes: Q4_K (qs uint8 [N, K/2], sm uint8 [N, K/16], dm uint8 [N, K/128])
    or Q6_K (ql uint8 [N, K/2], qh uint8 [N, K/4], sc int8 [N, K/16], d float16 [N, K/256]). The same
    words, joins, reshapes (A_SHAPE, B_SHAPE) and permutes (A_PERM, B_PERM) as the kernel; the
    decode rounds the scales (and mins) to x's dtype, then the weight once (as the asm's fma); the
    product is float64 (the kernel's float32 accumulation differs by its rounding only).
    decode_dtype=torch.float64 skips the decode's roundings (the exact product, for tests)."""
    M, K = x.shape
    N = planes[0].shape[0]
    check_shapes(M, N, K, num_warps, reps, 1, fmt)
    dt, nb, W, R = decode_dtype or x.dtype, K // 256, num_warps, reps
    P, NT = N // (16 * W * R), (8 if M <= 8 else 16) // 8
    lead = (P, R, W, 2, 8, nb)  # rows (program, R, W, h8, g) and the block
    a = (_reference_q4k if fmt == "q4_k" else _reference_q6k)(planes, lead, dt)
    a = a.movedim(5, 1).reshape(P, nb, R, W, *A_SHAPE[fmt])  # the block next to the program
    a = a.permute(0, 1, *(2 + i for i in A_PERM[fmt])).reshape(P, nb, 16 * W * R, 256)
    xb = _reference_x(x, fmt, NT, nb).permute(0, *(1 + i for i in B_PERM[fmt]))
    out = torch.einsum("pbrk,bkm->prm", a, xb.reshape(nb, 256, 8 * NT).double()).reshape(N, 8 * NT)
    return out[:, :M].t()


# ---------------------------------------------------------------------------------------------
# The kernels
# ---------------------------------------------------------------------------------------------


@triton.constexpr_function
def _axis(parent, rank: int, dim: int):
    """The 1-D layout of `parent`'s dimension `dim` (every other dimension sliced away)."""
    for d in reversed(range(rank)):
        if d != dim:
            parent = gl.SliceLayout(d, parent)
    return parent


@triton.constexpr_function
def layouts(num_warps: int, reps: int, block_m: int, fmt: str = "q4_k") -> dict:
    """The kernel's layouts and tile shapes (built inside the kernels, through `_layout`)."""
    nt = block_m // 8
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    # weight words [R, W, 2 (h8), 8 (g), 4 (t), words]: row 16 W r + 16 w + 8 h8 + g
    words = 8 if fmt == "q4_k" else 4
    lw = gl.BlockedLayout([reps, 1, 2, 1, 1, words], [1, 1, 1, 8, 4, 1], [1, num_warps, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0])
    # x's tile of a block in shared memory [32 NT, 64]: row 32 nt + 4 g + t holds the 64 values of k
    # that lane 4g + t multiplies for rows 8 nt + g of x. Copied 16 bytes a thread, whole lines of x;
    # read back a row a lane (every warp all of it), XOR-swizzled in 16-byte units so that the 8 lanes
    # of a quarter warp read 8 different bank groups
    xs_copy = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    # x from global memory (xstages 0) [NT, 8 (g), 4 (t), runs, run]: every warp holds all of it
    x_shape = (nt, 8, 4) + ((2, 32) if fmt == "q4_k" else (4, 16))
    lx = gl.BlockedLayout([nt, 1, 1, *x_shape[3:]], [1, 8, 4, 1, 1], [num_warps, 1, 1, 1, 1], [4, 3, 2, 1, 0])
    return dict(
        mma=mma,
        la=gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8),
        lb=gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8),
        w_axes=tuple(_axis(lw, 6, d) for d in range(6)),
        xs_copy=xs_copy,
        xs_axes=(gl.SliceLayout(1, xs_copy), gl.SliceLayout(0, xs_copy)),
        xs_shared=gl.SwizzledSharedLayout(8, 1, 8, [1, 0]),
        xs_lane=gl.BlockedLayout([1, 64], [32, 1], [1, num_warps], [1, 0]),
        x_shape=x_shape,
        x_axes=tuple(_axis(lx, 5, d) for d in range(5)),
        a_shape=(reps, num_warps) + A_SHAPE[fmt],
        a_perm=A_PERM[fmt],
        b_shape=(nt,) + B_SHAPE[fmt],
        b_perm=B_PERM[fmt],
    )


@triton.constexpr_function
def _layout(fmt, num_warps, reps, block_m, name):
    # layouts()[name] inside a kernel (so that the kernels take only ints as constexpr arguments)
    return layouts(num_warps, reps, block_m, fmt)[name]


@gluon.jit
def _idx(n: gl.constexpr, layout: gl.constexpr, axes: gl.constexpr):
    return gl.expand_dims(gl.arange(0, n, layout=layout), axes)


@gluon.jit
def _offsets(pid_n, FMT: gl.constexpr, W: gl.constexpr, R: gl.constexpr, BLOCK_M: gl.constexpr, WORDS: gl.constexpr):
    # -> row [R, W, 2, 8, 1, 1], t [.., 4, 1], the word index [.., WORDS]
    w_axes: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "w_axes")
    w0: gl.constexpr = w_axes[0]
    w1: gl.constexpr = w_axes[1]
    w2: gl.constexpr = w_axes[2]
    w3: gl.constexpr = w_axes[3]
    w4: gl.constexpr = w_axes[4]
    w5: gl.constexpr = w_axes[5]
    row = (
        pid_n * (16 * W * R)
        + _idx(R, w0, (1, 2, 3, 4, 5)) * (16 * W)
        + _idx(W, w1, (0, 2, 3, 4, 5)) * 16
        + _idx(2, w2, (0, 1, 3, 4, 5)) * 8
        + _idx(8, w3, (0, 1, 2, 4, 5))
    )
    return row, _idx(4, w4, (0, 1, 2, 3, 5)), _idx(WORDS, w5, (0, 1, 2, 3, 4))


@gluon.jit
def _lane_k(t, c, FMT: gl.constexpr):
    # the k (in a block) of value c (0..63) of lane t's x: Q4_K 64t + c (sub-blocks 2t, 2t + 1);
    # Q6_K 128(t // 2) + 16(t % 2) + 32(c // 16) + c % 16 (one 16-group of each of four sub-blocks)
    if FMT == "q4_k":
        return t * 64 + c
    else:
        return (t // 2) * 128 + (t % 2) * 16 + (c // 16) * 32 + c % 16


@gluon.jit
def _x_offsets(M, K, FMT: gl.constexpr, W: gl.constexpr, R: gl.constexpr, BLOCK_M: gl.constexpr):
    # x's offsets [NT, 8, 4, runs, run] of block 0 that each lane loads itself (xstages 0): row
    # 8 nt + g, value run * RUN + i of lane t; and the mask of the rows below M
    NT: gl.constexpr = BLOCK_M // 8
    axes: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "x_axes")
    shape: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "x_shape")
    a0: gl.constexpr = axes[0]
    a1: gl.constexpr = axes[1]
    a2: gl.constexpr = axes[2]
    a3: gl.constexpr = axes[3]
    a4: gl.constexpr = axes[4]
    m = _idx(NT, a0, (1, 2, 3, 4)) * 8 + _idx(8, a1, (0, 2, 3, 4))
    t = _idx(4, a2, (0, 1, 3, 4))
    c = _idx(shape[3], a3, (0, 1, 2, 4)) * shape[4] + _idx(shape[4], a4, (0, 1, 2, 3))
    return m * K + _lane_k(t, c, FMT), m < M


@gluon.jit
def _x_source(x_ptr, M, K, FMT: gl.constexpr, W: gl.constexpr, R: gl.constexpr, BLOCK_M: gl.constexpr):
    # the addresses of block 0's x tile [32 NT, 64]: row 32 nt + 4g + t holds lane 4g + t's values
    # of x's row 8 nt + g; and the mask of the rows below M
    axes: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "xs_axes")
    r = gl.expand_dims(gl.arange(0, BLOCK_M * 4, layout=axes[0]), 1)
    c = gl.expand_dims(gl.arange(0, 64, layout=axes[1]), 0)
    m = (r // 32) * 8 + (r % 32) // 4
    return x_ptr + m * K + _lane_k(r % 4, c, FMT), m < M


@gluon.jit
def _pair(v, DT: gl.constexpr):
    # float32 -> the int32 holding (v, v) in x's dtype (one cvt)
    asm: gl.constexpr = "cvt.rn.f16x2.f32 $0, $1, $1;" if DT == gl.float16 else "cvt.rn.bf16x2.f32 $0, $1, $1;"
    return gl.inline_asm_elementwise(asm, "=r,f", [v], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _halves(p, DT: gl.constexpr):
    # int32 holding two DT -> [..., 2] DT (low half first)
    lo = p.to(gl.int16).to(DT, bitcast=True)
    hi = (p >> 16).to(gl.int16).to(DT, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _pairs(p01, p23, DT: gl.constexpr):
    # the packed pairs of bytes 0-1 and 2-3 -> [..., 2 (j0), 2 (h)]
    return gl.join(_halves(p01, DT), _halves(p23, DT))


@gluon.jit
def _tiles(a, xv, FMT: gl.constexpr, W: gl.constexpr, R: gl.constexpr, BLOCK_M: gl.constexpr):
    # the joined decoded words and x's runs -> the MMA operands [rows, 256] and [256, 8 NT]; the
    # shapes and orders indexed one by one (a constexpr tuple is wrapped in triton 3.6, plain in 3.9)
    a_shape: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "a_shape")
    a_perm: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "a_perm")
    b_shape: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "b_shape")
    b_perm: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "b_perm")
    la: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "la")
    lb: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "lb")
    a = gl.reshape(a, [a_shape[0], a_shape[1], a_shape[2], a_shape[3], a_shape[4], a_shape[5], a_shape[6],
                       a_shape[7], a_shape[8], a_shape[9]])  # fmt: skip
    a = gl.permute(a, [a_perm[0], a_perm[1], a_perm[2], a_perm[3], a_perm[4], a_perm[5], a_perm[6], a_perm[7],
                       a_perm[8], a_perm[9]])  # fmt: skip
    a = gl.reshape(a, [16 * W * R, 256])
    b = gl.reshape(xv, [b_shape[0], b_shape[1], b_shape[2], b_shape[3], b_shape[4], b_shape[5], b_shape[6],
                        b_shape[7]])  # fmt: skip
    b = gl.permute(b, [b_perm[0], b_perm[1], b_perm[2], b_perm[3], b_perm[4], b_perm[5], b_perm[6], b_perm[7]])
    b = gl.reshape(b, [256, BLOCK_M])
    return gl.convert_layout(a, la, assert_trivial=True), gl.convert_layout(b, lb, assert_trivial=True)


@gluon.jit
def _store(acc, out_ptr, bias_ptr, pid_n, pid_k, M, N, ROWS: gl.constexpr, BLOCK_M: gl.constexpr, SPLIT: gl.constexpr,
           HAS_BIAS: gl.constexpr, mma: gl.constexpr):  # fmt: skip
    # out [M, N] (the bias added), or SPLIT: float32 partials [splits, M, N] (splitk_reduce adds it)
    rows = pid_n * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma))
    m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    omask = (rows < N)[:, None] & (m < M)[None, :]
    if SPLIT:
        gl.store(out_ptr + pid_k * M * N + (m * N)[None, :] + rows[:, None], acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += gl.load(bias_ptr + rows).to(gl.float32)[:, None]
        gl.store(out_ptr + (m * N)[None, :] + rows[:, None], acc.to(out_ptr.dtype.element_ty), mask=omask)


@gluon.jit
def _q4k_decode(wq, smw, dmw, DT: gl.constexpr):
    # wq int32 [R, W, 2, 8, 4, 8] (qs words); smw int32 [.., 4, 1]; dmw int32 [.., 1, 1]
    # -> the decoded weights [.., 4, 8, 2 (j0), 2 (h), 2 (n)]
    d = (dmw & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
    dmin = (dmw >> 16).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
    s_lo = d * (smw & 0xFF).to(gl.float32)
    nm_lo = -dmin * ((smw >> 8) & 0xFF).to(gl.float32)
    if DT == gl.bfloat16:
        s_hi = (d * 0.125) * ((smw >> 16) & 0xFF).to(gl.float32)  # the high nibble decodes as 8q
    else:
        s_hi = (d * 0.0625) * ((smw >> 16) & 0xFF).to(gl.float32)  # 16q
    nm_hi = -dmin * ((smw >> 24) & 0xFF).to(gl.float32)
    s_lo, _ = gl.broadcast(_pair(s_lo, DT), wq)
    nm_lo, _ = gl.broadcast(_pair(nm_lo, DT), wq)
    s_hi, _ = gl.broadcast(_pair(s_hi, DT), wq)
    nm_hi, _ = gl.broadcast(_pair(nm_hi, DT), wq)
    l01, l23, h01, h23 = gl.inline_asm_elementwise(
        _Q4K_F16 if DT == gl.float16 else _Q4K_BF16,
        "=r,=r,=r,=r,r,r,r,r,r",
        [wq, s_lo, nm_lo, s_hi, nm_hi],
        dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
        is_pure=True,
        pack=1,
    )
    return gl.join(_pairs(l01, l23, DT), _pairs(h01, h23, DT))


@gluon.jit
def _q6k_scale(w, shift):
    # the signed byte of each word w at bit shift -> float32
    return ((w << (24 - shift)) >> 24).to(gl.float32)


@gluon.jit
def _q6k_decode(qa, qb, qc, sa, sb, d, sh, DT: gl.constexpr):
    # qa, qb, qc int32 [R, W, 2, 8, 4, 4]: lane t's words of ql's halves and of qh; sa, sb int32
    # [.., 4, 1]: the scale words 2(t // 2), + 1; d float16 [.., 1, 1]; sh: 8 (t % 2)
    # -> the decoded weights [.., 4, 4, 2 (j0), 2 (h), 2 (n), 2 (j1)]
    df = d.to(gl.float32)
    s0, _ = gl.broadcast(_pair(df * _q6k_scale(sa, sh), DT), qa)  # sub-block r's 16-group: 8(t // 2) + 2r + t % 2
    s1, _ = gl.broadcast(_pair(df * _q6k_scale(sa, sh + 16), DT), qa)
    s2, _ = gl.broadcast(_pair(df * _q6k_scale(sb, sh), DT), qa)
    s3, _ = gl.broadcast(_pair(df * _q6k_scale(sb, sh + 16), DT), qa)
    o = gl.inline_asm_elementwise(
        _Q6K_F16 if DT == gl.float16 else _Q6K_BF16,
        "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r",
        [qa, qb, qc, s0, s1, s2, s3],
        dtype=(gl.int32,) * 8,
        is_pure=True,
        pack=1,
    )
    n0 = gl.join(_pairs(o[0], o[1], DT), _pairs(o[2], o[3], DT))  # r = 0, 1
    n1 = gl.join(_pairs(o[4], o[5], DT), _pairs(o[6], o[7], DT))  # r = 2, 3
    return gl.join(n0, n1)


@gluon.jit
def _block(p0, p1, p2, p3, offs, blk, FMT: gl.constexpr):
    # block blk's words of each lane. Q4_K: qs, the scale word, (d, dmin); Q6_K: ql's two halves,
    # qh, the two scale words, d
    if FMT == "q4_k":
        return gl.load(p0 + offs[0] + blk * 32), gl.load(p1 + offs[1] + blk * 4), gl.load(p2 + offs[2] + blk)
    else:
        qa = gl.load(p0 + offs[0] + blk * 32)
        qb = gl.load(p0 + offs[0] + blk * 32 + 8)
        qc = gl.load(p1 + offs[1] + blk * 16)
        sa = gl.load(p2 + offs[2] + blk * 4)
        sb = gl.load(p2 + offs[2] + blk * 4 + 1)
        return qa, qb, qc, sa, sb, gl.load(p3 + offs[3] + blk)


@gluon.jit
def _decode(w, offs, DT: gl.constexpr, FMT: gl.constexpr):
    # a block's words (_block) -> its decoded weights, the A tile's elements before _tiles
    if FMT == "q4_k":
        return _q4k_decode(w[0], w[1], w[2], DT)
    else:
        return _q6k_decode(w[0], w[1], w[2], w[3], w[4], w[5], offs[4], DT)


@gluon.jit
def _w4a16_sync_kernel(
    x_ptr, p0, p1, p2, p3, bias_ptr, out_ptr, M, N, K, stride_8, stride_16, BLOCKS_PER_SPLIT,
    FMT: gl.constexpr, BLOCK_M: gl.constexpr, W: gl.constexpr, R: gl.constexpr, SPLIT: gl.constexpr,
    HAS_BIAS: gl.constexpr, PREFETCH: gl.constexpr, XSTAGES: gl.constexpr,
):  # fmt: skip
    # Q4_K: p0, p1, p2 = qs int32 [N, K/8], sm int32 [N, K/64], dm int32 [N, K/256] (p3 unread);
    # Q6_K: ql int32 [N, K/8], qh int32 [N, K/16], sc int32 [N, K/64], d fp16 [N, K/256].
    # stride_8 = K / 8, stride_16 = K / 16 (arguments, so that their divisibility is known)
    ROWS: gl.constexpr = 16 * W * R
    mma: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "mma")
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    if FMT == "q4_k":
        row, t, wi = _offsets(pid_n, FMT, W, R, BLOCK_M, 8)
        # lane t: qs bytes 32t.. of the block, its scale word, (d, dmin)
        offs = (row * stride_8 + t * 8 + wi, row * (K // 64) + t, row * (K // 256))
    else:
        row, t, wi = _offsets(pid_n, FMT, W, R, BLOCK_M, 4)
        # lane t: ql words of the block (the other half: + 8), qh words, scale words 2(t // 2) and
        # + 1, d, and the bit of its scale bytes 8(t % 2)
        offs = (
            row * stride_8 + (t // 2) * 16 + (t % 2) * 4 + wi,
            row * stride_16 + (t // 2) * 8 + (t % 2) * 4 + wi,
            row * (K // 64) + (t // 2) * 2,
            row * (K // 256),
            (t % 2) * 8,
        )
    x_shape: gl.constexpr = _layout(FMT, W, R, BLOCK_M, "x_shape")
    acc = gl.zeros([ROWS, BLOCK_M], gl.float32, mma)
    b0 = pid_k * BLOCKS_PER_SPLIT
    last = b0 + BLOCKS_PER_SPLIT - 1
    if XSTAGES == 0:
        x_off, x_mask = _x_offsets(M, K, FMT, W, R, BLOCK_M)
    else:  # a ring of XSTAGES tiles of x in shared memory, filled by cp.async XSTAGES - 1 blocks ahead
        xs = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [XSTAGES, BLOCK_M * 4, 64],
                                       _layout(FMT, W, R, BLOCK_M, "xs_shared"))  # fmt: skip
        x_src, x_mask = _x_source(x_ptr, M, K, FMT, W, R, BLOCK_M)
        for s in gl.static_range(XSTAGES - 1):
            _cp_async(xs.index(s), x_src + gl.minimum(b0 + s, last) * 256, mask=x_mask)
            async_copy.commit_group()
    cur = _block(p0, p1, p2, p3, offs, b0, FMT)
    nxt = _block(p0, p1, p2, p3, offs, gl.minimum(b0 + 1, last), FMT)  # (PREFETCH 2)
    for blk in range(b0, b0 + BLOCKS_PER_SPLIT):
        i = blk - b0
        if XSTAGES > 0:
            _cp_async(xs.index((i + XSTAGES - 1) % XSTAGES), x_src + gl.minimum(blk + XSTAGES - 1, last) * 256,
                      mask=x_mask)  # fmt: skip
            async_copy.commit_group()
        # the block PREFETCH on flies while this one is decoded
        ahead = _block(p0, p1, p2, p3, offs, gl.minimum(blk + PREFETCH, last), FMT)
        if XSTAGES == 0:
            xv = gl.load(x_ptr + x_off + blk * 256, mask=x_mask, other=0.0)
        else:
            async_copy.wait_group(XSTAGES - 1)  # this block's tile has landed (a barrier follows)
            xv = xs.index(i % XSTAGES).load(_layout(FMT, W, R, BLOCK_M, "xs_lane"))
            xv = gl.reshape(xv, [x_shape[0], x_shape[1], x_shape[2], x_shape[3], x_shape[4]])
        a, b = _tiles(_decode(cur, offs, x_ptr.dtype.element_ty, FMT), xv, FMT, W, R, BLOCK_M)
        acc = mma_v2(a, b, acc)
        if PREFETCH == 2:
            cur, nxt = nxt, ahead
        else:
            cur = ahead
    _store(acc, out_ptr, bias_ptr, pid_n, pid_k, M, N, ROWS, BLOCK_M, SPLIT, HAS_BIAS, mma)


def check_shapes(M: int, N: int, K: int, num_warps: int, reps: int, split: int, fmt: str = "q4_k") -> None:
    rows = 16 * num_warps * reps
    if fmt not in FMTS:
        raise ValueError(f"w4a16_sync reads {FMTS}, not {fmt}")
    if not 1 <= M <= 16:
        raise ValueError(f"w4a16_sync takes 1 <= M <= 16 rows of x, got {M}")
    if N % rows or K % 256 or (K // 256) % split:
        raise ValueError(f"w4a16_sync needs N % {rows} == 0 and split {split} dividing K / 256 (N={N}, K={K})")


@dataclass(frozen=True)
class SyncConfig:
    """A program: num_warps warps of reps 16-row tiles each; K split `split` ways (partials summed by
    splitk_reduce); prefetch: the block whose words are loaded while one is decoded is 1 or 2 on
    (2: more bytes in flight a warp, more registers); maxnreg: a register cap per thread (None:
    ptxas's choice); xstages: 0, x loaded from global memory by each lane (measured), or 2..8, x's
    tiles through a cp.async ring of that many in shared memory (measured: `default_config`)."""

    num_warps: int = 4
    reps: int = 1
    split: int = 1
    maxnreg: int | None = None
    prefetch: int = 1
    xstages: int = 0

    def __post_init__(self):
        if self.prefetch not in (1, 2):
            raise ValueError(f"w4a16_sync: prefetch is 1 or 2 blocks on, got {self.prefetch}")
        if self.xstages != 0 and not 2 <= self.xstages <= 8:
            raise ValueError(
                f"w4a16_sync: xstages is 0 (x from global memory) or 2..8 tiles in shared memory, got {self.xstages}"
            )


def default_config(M: int, N: int, K: int, fmt: str, sms: int) -> SyncConfig:
    """4 warps of one tile (64 rows a program); K split 2 or 4 ways (a divisor of K / 256) while
    fewer than 2 programs per SM of `sms` run; from M = 2, x through a ring of 3 tiles in shared
    memory. Measured on an H200 (Q4_K, the four Llama-3-8B shapes, M = 1 / 4 / 8 / 16, warps x
    tiles 4x1 / 4x2, split 1 / 4, xstages 0 / 3: 2026-12-05-w4a16-sync-xstages.json): at M = 4..16
    within 12% of the best of those 8 configs on every shape, the best at M = 16 and on qkv; at
    M = 1, x from global memory (the ring did not pay on o and gate_up). Split 2 and M = 2, 3 are
    untimed."""
    programs, blocks = N // 64, K // 256
    split = 1
    for s in (2, 4):
        if programs * split >= 2 * sms or blocks % s:
            break
        split = s
    return SyncConfig(split=split, xstages=3 if M > 1 else 0)


def supports(M: int, N: int, K: int, fmt: str, config: SyncConfig | None = None) -> bool:
    """Whether the kernel takes this call (the shapes check_shapes accepts)."""
    c = config or SyncConfig()
    try:
        check_shapes(M, N, K, c.num_warps, c.reps, c.split, fmt)
    except ValueError:
        return False
    return True


def w4a16_sync(x: torch.Tensor, planes, bias: torch.Tensor | None, fmt: str, config: SyncConfig | None = None):
    """out [M, N] = x @ W^T + bias in x's dtype, for Q4_K or Q6_K planes (as `reference` takes
    them), bf16 / fp16 x [M, K] with 1 <= M <= 16 rows, CUDA."""
    M, K = x.shape
    N = planes[0].shape[0]
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"w4a16_sync takes bf16 / fp16 x, got {x.dtype}")
    c = config or default_config(M, N, K, fmt, num_sms(x.device))
    check_shapes(M, N, K, c.num_warps, c.reps, c.split, fmt)
    block_m = 8 if M <= 8 else 16
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    dst = torch.empty((c.split, M, N), dtype=torch.float32, device=x.device) if c.split > 1 else out
    opts = dict(BLOCK_M=block_m, W=c.num_warps, R=c.reps, SPLIT=c.split > 1, HAS_BIAS=bias is not None,
                PREFETCH=c.prefetch, XSTAGES=c.xstages, num_warps=c.num_warps)  # fmt: skip
    if c.maxnreg:
        opts["maxnreg"] = c.maxnreg
    grid = (N // (16 * c.num_warps * c.reps), c.split)
    words = [p.view(torch.int32) for p in planes[:3]]
    d = planes[3] if fmt == "q6_k" else words[2]  # (Q4_K has three planes: p3 is not read)
    b = bias if bias is not None else out
    _w4a16_sync_kernel[grid](x, *words, d, b, dst, M, N, K, K // 8, K // 16, K // 256 // c.split, FMT=fmt, **opts)
    if c.split > 1:
        splitk_reduce(dst, bias, out)
    return out
