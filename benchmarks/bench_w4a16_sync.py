"""Benchmark of a prototype: Q4_K W4A16 for 1-16 rows of x on mma.sync, reading the GGUF layout.

    python benchmarks/bench_w4a16_sync.py [--ms 1,2,4,8,16] [--configs 4x1,4x2,8x1] [--splits 1,2,4,8]

Not in the dispatcher: the question it answers is whether one kernel can read the Q4_K planes as
they are (no repacking) at M = 1..16 in about the same time (docs/kernels.md "A few rows"). Written
in Gluon (`triton.experimental.gluon`), where the kernel picks its register layouts:

- The weights are the A operand of m16n8k16 bf16 / fp16 MMAs (`mma_v2`, k_width 8), x's rows (8 or
  16) the B operand; both stay in registers (no shared memory).
- The A layout gives lane 4g + t of a warp rows g and g + 8 of its 16, and 8 + 8 of every 64 k.
  The kernel orders k (a dot's sum does not care) so that those are lane t's 32 bytes of the row's
  256-weight block: bytes 32t..32t+31, the low nibbles sub-block 2t and the high ones 2t + 1, with
  the sub-block pair's scale word. So the four lanes of a row read its whole 128-byte line of the
  block: GGUF order, full lines. Tile column 64b + 32h + 8t + 4n + j holds the weight
  k = 64t + 32n + 8b + 4h + j of the block (n: the nibble); x's rows are read in the same order
  (two 64-byte runs per lane and row).
- The decode is w4a16_mma's (`_decode_asm`): four bytes per instance, the nibble ORed into a magic
  number's mantissa, one packed fma removes the magic, one more applies the sub-block's scale and
  min (2 PRMT + 2 SHF + 4 LOP3 + 8 HFMA2 per 8 weights). Then `join` / `reshape` / `permute` make
  the decoded bytes the [rows, 256] A tile, whose conversion to the MMA operand layout moves no
  data (`convert_layout(..., assert_trivial=True)`); x's tile likewise.
- One 256-weight block a loop step; the next block's bytes and scale words are loaded before this
  one is decoded. K split across programs (float32 partials summed by `splitk_reduce`).

`mirror` is the same tensor program in pure torch (the reshapes and permutes, the decode with the
kernel's roundings, a float64 product): tests/test_benchmark_helpers.py checks it against the Q4_K
dequantizer on the CPU, which checks the k order; the GPU run checks the kernel against it.
Timed as bench_kernels.time_graph does (a CUDA graph over rotated weight copies), against the
dispatched qlinear (act_quant + W4A8 matvec up to M = 4, w4a16_mma above) and bf16 cuBLAS.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: E402

from inductor_fuse.kernels._common import splitk_reduce  # noqa: E402
from inductor_fuse.kernels.w4a16_mma import _decode_asm  # noqa: E402
from inductor_fuse.quant.formats import FORMATS  # noqa: E402

# w4a16_mma's decode, one qs word per instance: $5 / $7 the packed scale pair of the low / high
# nibbles (every byte of a word is in the same two sub-blocks), $6 / $8 minus the mins
_WORD = dict(scales=("$5", "$5", "$7", "$7"), mins=("$6", "$6", "$8", "$8"))
_WORD_BF16 = gl.constexpr(_decode_asm("0x43004300", "0xC300C300", "0x3F803F80", "bf16x2", 1, "0x00780078", **_WORD))
_WORD_F16 = gl.constexpr(_decode_asm("0x64006400", "0xE400E400", "0x3C003C00", "f16x2", 0, "0x00F000F0", **_WORD))

# ---------------------------------------------------------------------------------------------
# The k order and the tensor program, in pure torch
# ---------------------------------------------------------------------------------------------


# The tile's column order: the decoded words [.., t (lane % 4), b, j1, j0, h, n] and x's run
# [.., t, n, b, j1, h, j0] are permuted to [rows, (b, h, t, n, j1, j0)] / [(b, h, t, n, j1, j0), rows of
# x]: column 64b + 32h + 8t + 4n + 2j1 + j0 holds weight k = 64t + 32n + 8b + 4j1 + 2h + j0 of the
# block (byte 8b + 4j1 + 2h + j0 of lane t's 32, nibble n). Within a lane's 8 columns of a 64, the
# MMA takes (2i, 2i + 1) and the same pair 32 columns on as one instruction's operand registers:
# h next to j0 in x's run makes those two one 8-byte pair of its 16-byte loads (no moves).
A_SHAPE = (2, 8, 4, 4, 2, 2, 2, 2)  # after the rows' (R, W): (h8, g, t, b, j1, j0, h, n)
A_PERM = gl.constexpr((0, 1, 2, 3, 5, 8, 4, 9, 6, 7))  # of (R, W, h8, g, t, b, j1, j0, h, n)
B_SHAPE = (8, 4, 2, 4, 2, 2, 2)  # after NT: (g, t, n, b, j1, h, j0)
B_PERM = gl.constexpr((4, 6, 2, 3, 5, 7, 0, 1))  # of (NT, g, t, n, b, j1, h, j0)


def _round(v: torch.Tensor, dtype) -> torch.Tensor:
    return v.to(dtype).double()


def mirror(x: torch.Tensor, planes, num_warps: int = 4, reps: int = 1, decode_dtype=None) -> torch.Tensor:
    """The kernel's tensor program in torch, every program and block at once: out [M, N] float64.

    x [M, K] bf16 / fp16; planes: Q4_K (qs uint8 [N, K/2], sm uint8 [N, K/16], dm uint8 [N, K/128]).
    The same words, joins, reshapes (A_SHAPE, B_SHAPE) and permutes (A_PERM, B_PERM) as the kernel;
    the decode rounds the scale and the min to x's dtype, then q * s - m once (as the asm's fma);
    the product is float64 (the kernel's float32 accumulation differs by its rounding only).
    decode_dtype=torch.float64 skips the decode's roundings (the exact product, for tests)."""
    qs, sm, dm = planes
    M, K = x.shape
    N = qs.shape[0]
    check_shapes(M, N, K, num_warps, reps, 1)
    dt, nb, W, R = decode_dtype or x.dtype, K // 256, num_warps, reps
    P, NT = N // (16 * W * R), (8 if M <= 8 else 16) // 8
    lead = (P, R, W, 2, 8, nb)  # rows (program, R, W, h8, g) and the block
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
    a = torch.stack([torch.stack(pairs(lo), -1), torch.stack(pairs(hi), -1)], -1)  # [.., t, w, j0, h, n]
    a = a.movedim(5, 1).reshape(P, nb, R, W, *A_SHAPE)  # the block next to the program
    a = a.permute(0, 1, *(2 + i for i in A_PERM.value)).reshape(P, nb, 16 * W * R, 256)
    rows = torch.clamp(torch.arange(8 * NT), max=M - 1)  # rows of x past M read row M - 1
    xb = x[rows].view(NT, 8, nb, 4, 2, 32).movedim(2, 0).reshape(nb, NT, *B_SHAPE)
    xb = xb.permute(0, *(1 + i for i in B_PERM.value)).reshape(nb, 256, 8 * NT).double()
    out = torch.einsum("pbrk,bkm->prm", a, xb).reshape(N, 8 * NT)
    return out[:, :M].t()


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------


def _axis(parent, rank: int, dim: int):
    """The 1-D layout of `parent`'s dimension `dim` (every other dimension sliced away)."""
    for d in reversed(range(rank)):
        if d != dim:
            parent = gl.SliceLayout(d, parent)
    return parent


def layouts(num_warps: int, reps: int, block_m: int) -> dict:
    """The kernel's layouts (constexpr arguments)."""
    nt = block_m // 8
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    # weight words [R, W, 2 (h8), 8 (g), 4 (t), 8 (w)]: row 16 W r + 16 w + 8 h8 + g, bytes 32t + 4w..
    lw = gl.BlockedLayout([reps, 1, 2, 1, 1, 8], [1, 1, 1, 8, 4, 1], [1, num_warps, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0])
    # x [NT, 8 (g), 4 (t), 2 (n), 32 (4w + j)]: every warp holds all of it
    lx = gl.BlockedLayout([nt, 1, 1, 2, 32], [1, 8, 4, 1, 1], [num_warps, 1, 1, 1, 1], [4, 3, 2, 1, 0])
    return dict(
        mma=mma,
        la=gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8),
        lb=gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8),
        lw=lw,
        lx=lx,
        a_shape=(reps, num_warps) + A_SHAPE,
        b_shape=(nt,) + B_SHAPE,
        w_axes=tuple(_axis(lw, 6, d) for d in range(6)),
        x_axes=tuple(_axis(lx, 5, d) for d in range(5)),
    )


@gluon.jit
def _idx(n: gl.constexpr, layout: gl.constexpr, axes: gl.constexpr):
    return gl.expand_dims(gl.arange(0, n, layout=layout), axes)


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
def _decode(wq, smw, dmw, DT: gl.constexpr):
    # wq int32 [R, W, 2, 8, 4, 8] (qs words); smw int32 [R, W, 2, 8, 4, 1]; dmw int32 [R, W, 2, 8, 1, 1]
    # -> int32 [R, W, 2, 8, 4, 8] x 4: packed pairs, the low nibbles of bytes 0-1 and 2-3, the high ones
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
    return gl.inline_asm_elementwise(
        _WORD_F16 if DT == gl.float16 else _WORD_BF16,
        "=r,=r,=r,=r,r,r,r,r,r",
        [wq, s_lo, nm_lo, s_hi, nm_hi],
        dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
        is_pure=True,
        pack=1,
    )


@gluon.jit
def _a_tile(l01, l23, h01, h23, ROWS: gl.constexpr, DT: gl.constexpr, a_shape: gl.constexpr, a_perm: gl.constexpr,
            la: gl.constexpr):  # fmt: skip
    # the decoded pairs [R, W, 2, 8, t, w] -> [rows, 256], column 64b + 32h + 8t + 4n + 2j1 + j0 for
    # byte 4w + 2h + j0 (w = 2b + j1), nibble n
    lo = gl.join(_halves(l01, DT), _halves(l23, DT))  # [.., w, j0, h]
    hi = gl.join(_halves(h01, DT), _halves(h23, DT))
    a = gl.permute(gl.reshape(gl.join(lo, hi), a_shape.value), a_perm.value)
    return gl.convert_layout(gl.reshape(a, [ROWS, 256]), la, assert_trivial=True)


@gluon.jit
def _b_tile(xv, NT: gl.constexpr, b_shape: gl.constexpr, b_perm: gl.constexpr, lb: gl.constexpr):
    # [NT, 8 (g), t, n, 8b + 4j1 + 2h + j0] -> [256, 8 NT], the same column order
    b = gl.permute(gl.reshape(xv, b_shape.value), b_perm.value)
    return gl.convert_layout(gl.reshape(b, [256, 8 * NT]), lb, assert_trivial=True)


@gluon.jit
def _w4a16_sync_kernel(
    x_ptr, qs_ptr, sm_ptr, dm_ptr, out_ptr, M, N, K, stride_w, BLOCKS_PER_SPLIT,
    BLOCK_M: gl.constexpr, W: gl.constexpr, R: gl.constexpr, SPLIT: gl.constexpr,
    mma: gl.constexpr, la: gl.constexpr, lb: gl.constexpr, w_axes: gl.constexpr, x_axes: gl.constexpr,
    a_shape: gl.constexpr, b_shape: gl.constexpr,
):  # fmt: skip
    NT: gl.constexpr = BLOCK_M // 8
    ROWS: gl.constexpr = 16 * W * R
    DT: gl.constexpr = x_ptr.dtype.element_ty
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    # the weight words' offsets [R, W, 2, 8, 4, 8] (block 0; stride_w = K / 8) and the rows' scale words
    w0: gl.constexpr = w_axes[0]
    w1: gl.constexpr = w_axes[1]
    w2: gl.constexpr = w_axes[2]
    w3: gl.constexpr = w_axes[3]
    w4: gl.constexpr = w_axes[4]
    w5: gl.constexpr = w_axes[5]
    row = (
        pid_n * ROWS
        + _idx(R, w0, (1, 2, 3, 4, 5)) * (16 * W)
        + _idx(W, w1, (0, 2, 3, 4, 5)) * 16
        + _idx(2, w2, (0, 1, 3, 4, 5)) * 8
        + _idx(8, w3, (0, 1, 2, 4, 5))
    )  # [R, W, 2, 8, 1, 1]
    t = _idx(4, w4, (0, 1, 2, 3, 5))
    w_off = row * stride_w + t * 8 + _idx(8, w5, (0, 1, 2, 3, 4))
    s_off = row * (K // 64) + t  # [R, W, 2, 8, 4, 1]
    d_off = row * (K // 256)
    # x's offsets [NT, 8, 4, 2, 32]: row 8 nt + g (rows past M read row M - 1), k 64t + 32n + i of the block
    x0: gl.constexpr = x_axes[0]
    x1: gl.constexpr = x_axes[1]
    x2: gl.constexpr = x_axes[2]
    x3: gl.constexpr = x_axes[3]
    x4: gl.constexpr = x_axes[4]
    xm = gl.minimum(_idx(NT, x0, (1, 2, 3, 4)) * 8 + _idx(8, x1, (0, 2, 3, 4)), M - 1)
    x_off = xm * K + _idx(4, x2, (0, 1, 3, 4)) * 64 + _idx(2, x3, (0, 1, 2, 4)) * 32 + _idx(32, x4, (0, 1, 2, 3))
    acc = gl.zeros([ROWS, BLOCK_M], gl.float32, mma)
    b0 = pid_k * BLOCKS_PER_SPLIT
    last = b0 + BLOCKS_PER_SPLIT - 1
    wq = gl.load(qs_ptr + w_off + b0 * 32)
    smw = gl.load(sm_ptr + s_off + b0 * 4)
    dmw = gl.load(dm_ptr + d_off + b0)
    for blk in range(b0, b0 + BLOCKS_PER_SPLIT):
        nb = gl.minimum(blk + 1, last)  # the next block's bytes fly while this one is decoded
        wq_n = gl.load(qs_ptr + w_off + nb * 32)
        smw_n = gl.load(sm_ptr + s_off + nb * 4)
        dmw_n = gl.load(dm_ptr + d_off + nb)
        xv = gl.load(x_ptr + x_off + blk * 256)
        l01, l23, h01, h23 = _decode(wq, smw, dmw, DT)
        a = _a_tile(l01, l23, h01, h23, ROWS, DT, a_shape, A_PERM, la)
        acc = mma_v2(a, _b_tile(xv, NT, b_shape, B_PERM, lb), acc)
        wq, smw, dmw = wq_n, smw_n, dmw_n
    rows = pid_n * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma))
    m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    omask = (rows < N)[:, None] & (m < M)[None, :]
    if SPLIT:
        gl.store(out_ptr + pid_k * M * N + (m * N)[None, :] + rows[:, None], acc, mask=omask)
    else:
        gl.store(out_ptr + (m * N)[None, :] + rows[:, None], acc.to(out_ptr.dtype.element_ty), mask=omask)


def check_shapes(M: int, N: int, K: int, num_warps: int, reps: int, split: int) -> None:
    rows = 16 * num_warps * reps
    if not 1 <= M <= 16:
        raise ValueError(f"the prototype takes 1 <= M <= 16 rows of x, got {M}")
    if N % rows or K % 256 or (K // 256) % split:
        raise ValueError(f"needs N % {rows} == 0 and split {split} dividing K / 256 (N={N}, K={K})")


def w4a16_sync_linear(x: torch.Tensor, planes, split: int = 1, num_warps: int = 4, reps: int = 1,
                      maxnreg: int | None = None) -> torch.Tensor:  # fmt: skip
    """out [M, N] = x @ W^T for Q4_K planes (qs [N, K/2], sm [N, K/16], dm [N, K/128]), CUDA."""
    qs, sm, dm = planes
    M, K = x.shape
    N = qs.shape[0]
    check_shapes(M, N, K, num_warps, reps, split)
    block_m = 8 if M <= 8 else 16
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    dst = torch.empty((split, M, N), dtype=torch.float32, device=x.device) if split > 1 else out
    lay = layouts(num_warps, reps, block_m)
    opts = {"maxnreg": maxnreg} if maxnreg else {}
    _w4a16_sync_kernel[(N // (16 * num_warps * reps), split)](
        x, qs.view(torch.int32), sm.view(torch.int32), dm.view(torch.int32), dst, M, N, K, K // 8, K // 256 // split,
        BLOCK_M=block_m, W=num_warps, R=reps, SPLIT=split > 1, mma=lay["mma"], la=lay["la"], lb=lay["lb"],
        w_axes=lay["w_axes"], x_axes=lay["x_axes"], a_shape=lay["a_shape"], b_shape=lay["b_shape"],
        num_warps=num_warps, **opts,
    )  # fmt: skip
    if split > 1:
        splitk_reduce(dst, None, out)
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--configs", default="2x1,2x2,4x1,4x2,8x1", help="warps x row tiles per warp (16 rows each)")
    ap.add_argument("--splits", default="1,2,4,8", help="K splits tried (each must divide K / 256)")
    ap.add_argument("--maxnreg", type=int, default=0, help="register cap per thread (0: none)")
    ap.add_argument("--json", help="write the results here (default: benchmarks/results/<date>-w4a16-sync.json)")
    args = ap.parse_args()
    from bench_kernels import SMALL_M_SHAPES, time_graph, weight_copies
    from common import print_table, write_json

    dev = torch.device("cuda")
    ms = [int(m) for m in args.ms.split(",")]
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    splits = [int(s) for s in args.splits.split(",")]
    rows, table = [], []
    for name, N, K, fmt in SMALL_M_SHAPES:
        if fmt != "q4_k":
            continue
        copies = weight_copies("q4_k", N, K, dev)
        bf16 = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        w16 = FORMATS["q4_k"].dequantize(copies[0]).to(torch.bfloat16)  # the error of bf16 weights, for scale
        for M in ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            want = mirror(x, copies[0])  # the kernel's own roundings
            exact = mirror(x, copies[0], decode_dtype=torch.float64)
            op = torch.ops.inductor_fuse.qlinear(x, copies[0], None, "q4_k")
            row = {"shape": name, "N": N, "K": K, "M": M, "maxnreg": args.maxnreg}
            row["op_us"] = 1e6 * time_graph(
                [lambda p=p: torch.ops.inductor_fuse.qlinear(x, p, None, "q4_k") for p in copies]
            )
            row["bf16_us"] = 1e6 * time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in bf16])
            row["op_err_vs_exact"] = _rel(op, exact)
            row["bf16_weights_err_vs_exact"] = _rel(torch.nn.functional.linear(x, w16), exact)
            best = None
            for nw, reps in configs:
                for split in splits:
                    try:
                        check_shapes(M, N, K, nw, reps, split)
                    except ValueError:
                        continue
                    key = f"{nw}x{reps}_split{split}"
                    fn = lambda p, nw=nw, reps=reps, split=split: w4a16_sync_linear(  # noqa: E731
                        x, p, split, nw, reps, args.maxnreg or None
                    )
                    out = fn(copies[0])
                    row[f"{key}_err_vs_mirror"] = _rel(out, want)
                    row[f"{key}_err_vs_exact"] = _rel(out, exact)
                    row[f"{key}_us"] = 1e6 * time_graph([lambda p=p, fn=fn: fn(p) for p in copies])
                    if best is None or row[f"{key}_us"] < row[f"{best}_us"]:
                        best = key
            row["best"], row["best_us"] = best, row[f"{best}_us"]
            rows.append(row)
            table.append([name, M, row["op_us"], row["bf16_us"], row["best_us"], best,
                          f"{row[f'{best}_err_vs_mirror']:.1e}", f"{row[f'{best}_err_vs_exact']:.1e}",
                          f"{row['bf16_weights_err_vs_exact']:.1e}"])  # fmt: skip
            print(f"{name} M={M}: qlinear {row['op_us']:.2f} us, bf16 {row['bf16_us']:.2f}, "
                  f"sync {row['best_us']:.2f} ({best})", flush=True)  # fmt: skip
        del copies, bf16, w16
        torch.cuda.empty_cache()
    print_table(
        "Q4_K, Llama-3-8B shapes, bf16 x: the dispatched qlinear, bf16 cuBLAS and the W4A16 mma.sync prototype (us)",
        ["shape", "M", "qlinear", "bf16", "sync", "config", "err vs mirror", "err vs exact", "bf16 w err"],
        table,
    )
    write_json(f"{datetime.date.today().isoformat()}-w4a16-sync.json", {"rows": rows}, path=args.json)


if __name__ == "__main__":
    main()
