"""Benchmark of a prototype: Q4_K W4A8 for 1-16 rows of x on mma.sync, operands stored in MMA fragment order.

    python benchmarks/bench_fragment_order.py [--ms 1,2,4,8,16] [--splits 2,4,8] [--bf16]

Not in the dispatcher: a measurement of what a Q4_K plane layout made for the tensor cores would give
at M = 1..16 (docs/kernels.md "A few rows"). The kernel is written in Gluon
(`triton.experimental.gluon`), where the kernel picks its register layouts:

- m16n8k32 int8 MMAs (`mma_v2`), the weights as the A operand (16 rows x 32 weights of one
  sub-block), the int8 activation as B (32 x 8 rows of x), int32 results scaled per sub-block in
  float32: `acc += d*sc * xd * dot - dmin*m * xs32` (x quantized per 32 as `act_quant` does).
- The weights are stored so that each thread's 16 bytes of an A fragment (two rows x two 4-byte
  groups) are contiguous, and a warp's 32 threads read 512 contiguous bytes: one 16-byte load a
  thread for 16 rows x 64 weights (both nibbles), then `reshape` / `permute` to the [rows, 32] tile
  and a layout conversion that compiles to nothing (`assert_trivial`). x likewise, 8 bytes a thread;
  the scales in rows of 16. `repack_weights` / `repack_x` build these layouts from the GGUF planes
  and `act_quant`'s output; `reference` reads them back in pure torch.
- Each loop step loads 4 chunks of 64 weights before it multiplies (`maxnreg` 128 keeps ptxas from
  sinking the loads to their use); K split across programs, float32 partials summed by
  `splitk_reduce`.
- A second prototype reads the same tensors with dp4a (M <= 8, plain Triton: it also runs under the
  interpreter, tests/test_benchmark_helpers.py): each lane dots its two rows' 8 weights per
  sub-block with x, scales its own partial sums, and the four lanes of a row are summed after the K
  loop. The question it answers: can one layout serve M = 1 as fast as the GGUF-order matvec.

The same MMA with the operands read from the GGUF layout (each fragment load spanning 8 rows 2 KB
apart) was 2x slower (`2026-12-04-mma-sync-gluon.json`). Timed as bench_kernels.time_graph does: a
CUDA graph over rotated weight copies; the prototype's time excludes x's quantization (which the
act_quant rule fuses into the producer up to the matvec's M) and includes the split-K sum. The
errors: against the dispatched qlinear (W4A8 matvec up to M = 4: same x rounding; W4A16 above:
x's int8 rounding shows), and against `reference` in float64 (the bf16 rounding of the output shows).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from bench_kernels import SMALL_M_SHAPES, time_graph, weight_copies  # noqa: E402
from common import print_table, write_json  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: E402

from inductor_fuse.kernels._common import (  # noqa: E402
    QuantizedActivation,
    _dp4a,
    act_quant,
    add_to_row,
    f16_pair,
    interpreting,
    loop_bound,
    splitk_reduce,
)

SHAPES = [(name, N, K) for name, N, K, fmt in SMALL_M_SHAPES if fmt == "q4_k"]  # Llama-3-8B's Q4_K linears
CHUNKS_PER_STEP = 4  # 64-weight chunks loaded per loop step


# ---------------------------------------------------------------------------------------------
# Layouts (pure torch). Weight row r = 16 n16 + 8h + g, chunk c (bytes 32c..32c+31 of the qs row:
# low nibbles sub-block 2c, high nibbles 2c + 1), byte 16q + 4t + i of the chunk: thread lane
# 4g + t holds bytes (h, q, i) of its rows g and g + 8 -- the m16n8k32 A fragment with the MMA's
# k = byte position. x row m = 8 nt + g, sub-block sb, element 16q + 4t + i: the B fragment.
# ---------------------------------------------------------------------------------------------


def repack_weights(planes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K planes (qs [N, K/2], sm [N, K/16], dm [N, K/128]; N % 16 == 0) -> (wr uint8 [N/16, K/64,
    32 lanes, 16]: wr[n16, c, 4g + t, 8h + 4q + i] = qs[16 n16 + 8h + g, 32c + 16q + 4t + i];
    smr int32 [N/16, K/64, 16]: the scale word of chunk c of each row; dmr int32 [N/16, K/256, 16]:
    (d, dmin) of each block and row)."""
    qs, sm, dm = planes
    N, half_k = qs.shape
    K = 2 * half_k
    if N % 16 or K % 256:
        raise ValueError(f"fragment order needs N % 16 == 0 and K % 256 == 0, got N={N}, K={K}")
    C = K // 64
    wr = qs.view(N // 16, 2, 8, C, 2, 4, 4).permute(0, 3, 2, 5, 1, 4, 6).contiguous().view(N // 16, C, 32, 16)
    smr = sm.contiguous().view(torch.int32).view(N // 16, 16, C).permute(0, 2, 1).contiguous()
    dmr = dm.contiguous().view(torch.int32).view(N // 16, 16, K // 256).permute(0, 2, 1).contiguous()
    return wr, smr, dmr


def repack_x(xa: QuantizedActivation, M: int, K: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """act_quant's output -> (xr int8 [K/32, block_m/8, 32 lanes, 8]: xr[sb, nt, 4g + t, 4q + i] =
    xq[8 nt + g, 32 sb + 16q + 4t + i], rows past M zero; xs4 float32 [K/64, block_m, 4]: (xd, xs32)
    of sub-block 2c, then of 2c + 1, per row of x)."""
    nt = block_m // 8
    xq = xa.xq.view(torch.int8).view(M, K)
    xp = xq.new_zeros(block_m, K)
    xp[:M] = xq
    xr = xp.view(nt, 8, K // 32, 2, 4, 4).permute(2, 0, 1, 4, 3, 5).contiguous().view(K // 32, nt, 32, 8)
    xd, xs = xa.xd.view(M, K // 32), xa.xs32.view(M, K // 32)
    xs4 = torch.zeros(K // 64, block_m, 4, dtype=torch.float32, device=xq.device)
    for j, t in enumerate((xd[:, 0::2], xs[:, 0::2], xd[:, 1::2], xs[:, 1::2])):
        xs4[:, :M, j] = t.t()
    return xr, xs4


def reference(xr: torch.Tensor, xs4: torch.Tensor, packed, M: int) -> torch.Tensor:
    """What the kernel computes, read back from the repacked tensors with the kernel's own reshapes
    (float64): [M, N]."""
    wr, smr, dmr = packed
    n16, C = wr.shape[:2]
    K = 64 * C
    # weights: [n16, c, g, t, h, q, i] -> tile rows (n16, h, g), k = 16q + 4t + i
    t = wr.view(n16, C, 8, 4, 2, 2, 4).permute(0, 4, 2, 1, 5, 3, 6).reshape(16 * n16, C, 32).to(torch.int64)
    lo, hi = t & 15, t >> 4
    sm = smr.permute(0, 2, 1).reshape(16 * n16, C)
    dmw = dmr.permute(0, 2, 1).reshape(16 * n16, K // 256)
    d = (dmw & 0xFFFF).to(torch.int16).view(torch.float16).double().repeat_interleave(4, 1)
    dmin = (dmw >> 16).to(torch.int16).view(torch.float16).double().repeat_interleave(4, 1)
    byte = [((sm >> (8 * j)) & 0xFF).double() for j in range(4)]  # sc_lo, m_lo, sc_hi, m_hi
    nt = xr.shape[1]
    # x: [sb, nt, g, t, q, i] -> [rows (nt, g), sb, 16q + 4t + i]
    xq = xr.view(K // 32, nt, 8, 4, 2, 4).permute(1, 2, 0, 4, 3, 5).reshape(8 * nt, K // 32, 32)[:M].to(torch.int64)
    xd_lo, xs_lo, xd_hi, xs_hi = (xs4[:, :M, j].t().double() for j in range(4))
    # (float64 holds these integer dots exactly; CUDA has no int64 matmul)
    p_lo = torch.einsum("nck,mck->nmc", lo.double(), xq[:, 0::2].double())
    p_hi = torch.einsum("nck,mck->nmc", hi.double(), xq[:, 1::2].double())
    out = (
        (d * byte[0])[:, None] * p_lo * xd_lo[None]
        + (d * byte[2])[:, None] * p_hi * xd_hi[None]
        - (dmin * byte[1])[:, None] * xs_lo[None]
        - (dmin * byte[3])[:, None] * xs_hi[None]
    ).sum(-1)
    return out.t()


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _lo4(w):
    return gl.inline_asm_elementwise("and.b32 $0, $1, 0x0F0F0F0F;", "=r,r", [w], dtype=gl.int8, is_pure=True, pack=4)


@gluon.jit
def _hi4(w):
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t; shr.u32 t, $1, 4; and.b32 $0, t, 0x0F0F0F0F; }",
        "=r,r",
        [w],
        dtype=gl.int8,
        is_pure=True,
        pack=4,
    )


@gluon.jit
def _b_fragment(ptrs, NT: gl.constexpr, lb: gl.constexpr):
    # x's bytes of one sub-block [NT, 32 lanes, 8] (one 8-byte load a thread) -> the MMA's B tile
    # [32, 8 NT], a conversion that moves nothing
    t = gl.permute(gl.reshape(gl.load(ptrs), [NT, 8, 4, 2, 4]), [3, 2, 4, 0, 1])
    return gl.convert_layout(gl.reshape(t, [32, 8 * NT]), lb, assert_trivial=True)


@gluon.jit
def _load_chunk(bases, offs, c, BLOCK_M: gl.constexpr, G: gl.constexpr, la: gl.constexpr, lb: gl.constexpr):
    # bases: (w, x, sm, dm, xs) pointers; offs: this thread's offsets into each (the kernel's w_off ...)
    w_ptr, x_ptr, sm_ptr, dm_ptr, xs_ptr = bases
    w_off, x_off, s_off, d_off, xs_off = offs
    NT: gl.constexpr = BLOCK_M // 8
    t = gl.load(w_ptr + w_off + c * 512)  # [G, 32, 16]: one 16-byte load a thread
    t = gl.permute(gl.reshape(t, [G, 8, 4, 2, 2, 4]), [0, 3, 1, 4, 2, 5])
    w = gl.convert_layout(gl.reshape(t, [16 * G, 32]), la, assert_trivial=True)
    xl = _b_fragment(x_ptr + x_off + (2 * c) * (NT * 256), NT, lb)
    xh = _b_fragment(x_ptr + x_off + (2 * c + 1) * (NT * 256), NT, lb)
    smw = gl.load(sm_ptr + s_off + c * 16)
    dmw = gl.load(dm_ptr + d_off + (c // 4) * 16)
    xd_lo = gl.load(xs_ptr + xs_off + c * (BLOCK_M * 4))
    xs_lo = gl.load(xs_ptr + xs_off + c * (BLOCK_M * 4) + 1)
    xd_hi = gl.load(xs_ptr + xs_off + c * (BLOCK_M * 4) + 2)
    xs_hi = gl.load(xs_ptr + xs_off + c * (BLOCK_M * 4) + 3)
    return w, xl, xh, smw, dmw, xd_lo, xs_lo, xd_hi, xs_hi


@gluon.jit
def _chunk_dot(acc, zi, chunk):
    w, xl, xh, smw, dmw, xd_lo, xs_lo, xd_hi, xs_hi = chunk
    p_lo = mma_v2(_lo4(w), xl, zi)
    p_hi = mma_v2(_hi4(w), xh, zi)
    d = (dmw & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
    dmin = (dmw >> 16).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
    s_lo = d * (smw & 0xFF).to(gl.float32)
    m_lo = dmin * ((smw >> 8) & 0xFF).to(gl.float32)
    s_hi = d * ((smw >> 16) & 0xFF).to(gl.float32)
    m_hi = dmin * ((smw >> 24) & 0xFF).to(gl.float32)
    acc += s_lo[:, None] * (p_lo.to(gl.float32) * xd_lo[None, :])
    acc += s_hi[:, None] * (p_hi.to(gl.float32) * xd_hi[None, :])
    acc -= m_lo[:, None] * xs_lo[None, :]
    acc -= m_hi[:, None] * xs_hi[None, :]
    return acc


@gluon.jit
def _fragment_order_kernel(x_ptr, xs_ptr, w_ptr, sm_ptr, dm_ptr, out_ptr, M, N, K, CHUNKS_PER_SPLIT,
                           BLOCK_M: gl.constexpr, NUM_WARPS: gl.constexpr, SPLIT: gl.constexpr):  # fmt: skip
    G: gl.constexpr = NUM_WARPS  # 16-row groups per program, one per warp
    NT: gl.constexpr = BLOCK_M // 8
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1], instr_shape=[16, 8])
    la: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    lb: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    lw: gl.constexpr = gl.BlockedLayout([1, 1, 16], [1, 32, 1], [NUM_WARPS, 1, 1], [2, 1, 0])
    lx: gl.constexpr = gl.BlockedLayout([1, 1, 8], [1, 32, 1], [1, 1, NUM_WARPS], [2, 1, 0])  # every warp: all of x
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    C = K // 64
    c_lo = pid_k * CHUNKS_PER_SPLIT
    g0 = pid_n * G + gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, lw)))
    lane = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, lw)))
    byte = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(1, lw)))
    w_off = (g0 * C * 512)[:, None, None] + (lane * 16)[None, :, None] + byte[None, None, :]
    nt = gl.arange(0, NT, layout=gl.SliceLayout(1, gl.SliceLayout(2, lx)))
    lane_x = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, lx)))
    byte_x = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, lx)))
    x_off = (nt * 256)[:, None, None] + (lane_x * 8)[None, :, None] + byte_x[None, None, :]
    rows = pid_n * (16 * G) + gl.arange(0, 16 * G, layout=gl.SliceLayout(1, mma))
    s_off = (rows // 16) * (C * 16) + rows % 16
    d_off = (rows // 16) * ((K // 256) * 16) + rows % 16
    m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    xs_off = m * 4
    bases = (w_ptr, x_ptr, sm_ptr, dm_ptr, xs_ptr)
    offs = (w_off, x_off, s_off, d_off, xs_off)
    acc = gl.zeros([16 * G, BLOCK_M], gl.float32, mma)
    zi = gl.zeros([16 * G, BLOCK_M], gl.int32, mma)
    for c in range(c_lo, c_lo + CHUNKS_PER_SPLIT, 4):  # CHUNKS_PER_STEP: every load of the step first
        c0 = _load_chunk(bases, offs, c, BLOCK_M, G, la, lb)
        c1 = _load_chunk(bases, offs, c + 1, BLOCK_M, G, la, lb)
        c2 = _load_chunk(bases, offs, c + 2, BLOCK_M, G, la, lb)
        c3 = _load_chunk(bases, offs, c + 3, BLOCK_M, G, la, lb)
        acc = _chunk_dot(acc, zi, c0)
        acc = _chunk_dot(acc, zi, c1)
        acc = _chunk_dot(acc, zi, c2)
        acc = _chunk_dot(acc, zi, c3)
    omask = (rows < N)[:, None] & (m < M)[None, :]
    if SPLIT:
        gl.store(out_ptr + pid_k * M * N + (m * N)[None, :] + rows[:, None], acc, mask=omask)
    else:
        gl.store(out_ptr + (m * N)[None, :] + rows[:, None], acc.to(out_ptr.dtype.element_ty), mask=omask)


# ---------------------------------------------------------------------------------------------
# The same layouts read by a dp4a matvec (M <= 8; plain Triton, so it also runs under the
# interpreter): lane 4g + t holds rows g and g + 8 of its group, 8 weights of each of the chunk's
# two sub-blocks per row, as four int32 words (row g: words 0-1, row g + 8: words 2-3; the word's
# low nibbles are sub-block 2c, high 2c + 1). Each lane dots them with the matching 8 bytes of x
# (repack_x's lane 4m + t of row m), scales its partial sums by the row's (d * sc, xd) (scaling is
# linear: each lane may scale its own part) and subtracts a quarter of the min term, which all four
# lanes of a row compute; the four lanes are summed once, after the K loop.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dp4a_row_scales(smw, dmw):
    # one row's chunk: d * sc and a quarter of dmin * m (all 4 lanes of the row add it) of both
    # sub-blocks, float32 [G, 32]
    d, dmin = f16_pair(dmw)
    q = 0.25 * dmin
    s_lo, m_lo = d * (smw & 0xFF).to(tl.float32), q * ((smw >> 8) & 0xFF).to(tl.float32)
    s_hi, m_hi = d * ((smw >> 16) & 0xFF).to(tl.float32), q * ((smw >> 24) & 0xFF).to(tl.float32)
    return s_lo, m_lo, s_hi, m_hi


@triton.jit
def _dp4a_chunk(wa, wb, smw_a, smw_b, dmw_a, dmw_b, x32_ptr, xs_ptr, c, lane, j2, accs,
                BLOCK_M: tl.constexpr, USE_ASM: tl.constexpr):  # fmt: skip
    # accs: 2 * BLOCK_M float32 [G, 32]: row g of x-row m at 2m, row g + 8 at 2m + 1
    a_lo, a_hi = wa & 0x0F0F0F0F, (wa >> 4) & 0x0F0F0F0F
    b_lo, b_hi = wb & 0x0F0F0F0F, (wb >> 4) & 0x0F0F0F0F
    sa_lo, ma_lo, sa_hi, ma_hi = _dp4a_row_scales(smw_a, dmw_a)
    sb_lo, mb_lo, sb_hi, mb_hi = _dp4a_row_scales(smw_b, dmw_b)
    for mi in tl.static_range(BLOCK_M):
        # x-row mi's 8 bytes of each sub-block for this lane's t: words [2 lanes' worth] at lane 4 mi + t
        xo = (4 * mi + lane % 4) * 2
        x_lo = tl.load(x32_ptr + (2 * c) * 64 + xo + j2)  # [1, 32, 2]
        x_hi = tl.load(x32_ptr + (2 * c + 1) * 64 + xo + j2)
        xd_lo = tl.load(xs_ptr + c * 32 + mi * 4)
        xs_lo = tl.load(xs_ptr + c * 32 + mi * 4 + 1)
        xd_hi = tl.load(xs_ptr + c * 32 + mi * 4 + 2)
        xs_hi = tl.load(xs_ptr + c * 32 + mi * 4 + 3)
        pa_lo = tl.sum(_dp4a(a_lo, x_lo, False, USE_ASM), axis=2).to(tl.float32)
        pa_hi = tl.sum(_dp4a(a_hi, x_hi, False, USE_ASM), axis=2).to(tl.float32)
        pb_lo = tl.sum(_dp4a(b_lo, x_lo, False, USE_ASM), axis=2).to(tl.float32)
        pb_hi = tl.sum(_dp4a(b_hi, x_hi, False, USE_ASM), axis=2).to(tl.float32)
        ya = sa_lo * (pa_lo * xd_lo) + sa_hi * (pa_hi * xd_hi) - (ma_lo * xs_lo + ma_hi * xs_hi)
        yb = sb_lo * (pb_lo * xd_lo) + sb_hi * (pb_hi * xd_hi) - (mb_lo * xs_lo + mb_hi * xs_hi)
        accs = add_to_row(accs, ya, 2 * mi)
        accs = add_to_row(accs, yb, 2 * mi + 1)
    return accs


@triton.jit
def _fragment_dp4a_kernel(
    x32_ptr, xs_ptr, w32_ptr, sm_ptr, dm_ptr, out_ptr, M, N, K, CHUNKS_PER_SPLIT,
    BLOCK_M: tl.constexpr, G: tl.constexpr, SPLIT: tl.constexpr, USE_ASM: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    C = K // 64
    gi = pid_n * G + tl.arange(0, G)[:, None]  # [G, 1]: the program's 16-row groups
    lane = tl.arange(0, 32)[None, :]  # [1, 32]
    j2 = tl.arange(0, 2)[None, None, :]
    w_row = (gi * C)[:, :, None] * 128 + (lane * 4)[:, :, None] + j2  # int32 words of wr: [G, 32, 2]
    s_row = gi * (C * 16) + lane // 4  # smr words of row g (row g + 8: + 8)
    d_row = gi * ((K // 256) * 16) + lane // 4
    lane3 = lane[:, :, None]
    zero = tl.zeros([G, 32], dtype=tl.float32)
    accs = (zero,) * 16
    c0 = pid_k * CHUNKS_PER_SPLIT
    wa = tl.load(w32_ptr + w_row + c0 * 128)
    wb = tl.load(w32_ptr + w_row + c0 * 128 + 2)
    for c in range(loop_bound(c0), loop_bound(c0 + CHUNKS_PER_SPLIT)):  # (loop_bound: triton 3.6's interpreter)
        cn = tl.minimum(c + 1, c0 + CHUNKS_PER_SPLIT - 1)  # the next chunk's weights fly while this one computes
        wa_n = tl.load(w32_ptr + w_row + cn * 128)
        wb_n = tl.load(w32_ptr + w_row + cn * 128 + 2)
        smw_a = tl.load(sm_ptr + s_row + c * 16)
        smw_b = tl.load(sm_ptr + s_row + c * 16 + 8)
        dmw_a = tl.load(dm_ptr + d_row + (c // 4) * 16)
        dmw_b = tl.load(dm_ptr + d_row + (c // 4) * 16 + 8)
        accs = _dp4a_chunk(wa, wb, smw_a, smw_b, dmw_a, dmw_b, x32_ptr, xs_ptr, c, lane3, j2, accs, BLOCK_M, USE_ASM)
        wa, wb = wa_n, wb_n
    rows = (pid_n * G + tl.arange(0, G))[:, None] * 16 + tl.arange(0, 8)[None, :]  # [G, 8]: rows g; + 8: rows g + 8
    for mi in tl.static_range(BLOCK_M):
        if mi < M:
            ya = tl.sum(tl.reshape(accs[2 * mi], [G, 8, 4]), axis=2)
            yb = tl.sum(tl.reshape(accs[2 * mi + 1], [G, 8, 4]), axis=2)
            if SPLIT:
                base = out_ptr + (pid_k * M + mi) * N
                tl.store(base + rows, ya)
                tl.store(base + rows + 8, yb)
            else:
                tl.store(out_ptr + mi * N + rows, ya.to(out_ptr.dtype.element_ty))
                tl.store(out_ptr + mi * N + rows + 8, yb.to(out_ptr.dtype.element_ty))


def fragment_dp4a_linear(x_packed, packed, M: int, out_dtype, split: int, groups: int = 4) -> torch.Tensor:
    """The dp4a reading of the same tensors (M <= 8; repack_x with block_m 8): out [M, N]."""
    xr, xs4 = x_packed
    wr, smr, dmr = packed
    N, C = wr.shape[0] * 16, wr.shape[1]
    if not 1 <= M <= 8 or xr.shape[1] != 1:
        raise ValueError(f"the dp4a prototype takes 1 <= M <= 8 rows of x packed for 8, got M = {M}")
    if C % split or N % (16 * groups):
        raise ValueError(f"split {split} must divide K / 64 = {C}; N % {16 * groups}")
    out = torch.empty((M, N), dtype=out_dtype, device=wr.device)
    dst = torch.empty((split, M, N), dtype=torch.float32, device=wr.device) if split > 1 else out
    _fragment_dp4a_kernel[(N // (16 * groups), split)](
        xr.view(torch.int32), xs4, wr.view(torch.int32), smr, dmr, dst, M, N, 64 * C, C // split,
        BLOCK_M=triton.next_power_of_2(M), G=groups, SPLIT=split > 1, USE_ASM=not interpreting(), num_warps=groups,
    )  # fmt: skip
    if split > 1:
        splitk_reduce(dst, None, out)
    return out


def block_m_for(M: int) -> int:
    if not 1 <= M <= 16:
        raise ValueError(f"the prototype takes 1 <= M <= 16 rows of x, got {M}")
    return 8 if M <= 8 else 16


def fragment_linear(x_packed, packed, M: int, out_dtype, split: int, num_warps: int = 4) -> torch.Tensor:
    """out [M, N] from repack_x's and repack_weights' tensors (CUDA)."""
    xr, xs4 = x_packed
    wr, smr, dmr = packed
    N, C = wr.shape[0] * 16, wr.shape[1]
    K = 64 * C
    if C % (split * CHUNKS_PER_STEP) or N % (16 * num_warps):
        raise ValueError(f"split {split} x {CHUNKS_PER_STEP} chunks must divide K / 64 = {C}; N % {16 * num_warps}")
    out = torch.empty((M, N), dtype=out_dtype, device=wr.device)
    dst = torch.empty((split, M, N), dtype=torch.float32, device=wr.device) if split > 1 else out
    _fragment_order_kernel[(N // (16 * num_warps), split)](
        xr, xs4, wr, smr, dmr, dst, M, N, K, C // split,
        BLOCK_M=block_m_for(M), NUM_WARPS=num_warps, SPLIT=split > 1, num_warps=num_warps, maxnreg=128,
    )  # fmt: skip
    if split > 1:
        splitk_reduce(dst, None, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--splits", default="2,4,8", help="K splits tried per shape and M (each must divide K / 256)")
    ap.add_argument("--bf16", action="store_true", help="also time F.linear on bf16 weights")
    ap.add_argument("--json", help="write the results here (default: benchmarks/results/<date>-fragment-order.json)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    ms = [int(m) for m in args.ms.split(",")]
    splits = [int(s) for s in args.splits.split(",")]
    rows, table = [], []
    for name, N, K in SHAPES:
        copies = weight_copies("q4_k", N, K, dev)
        packs = [repack_weights(p) for p in copies]
        bf16 = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(3)] if args.bf16 else None
        for M in ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            xa = act_quant(x)
            xp = repack_x(xa, M, K, block_m_for(M))
            ref = reference(*xp, packs[0], M)
            op = torch.ops.inductor_fuse.qlinear(x, copies[0], None, "q4_k").double()
            row = {"shape": name, "N": N, "K": K, "M": M}
            row["op_us"] = 1e6 * time_graph(
                [lambda p=p: torch.ops.inductor_fuse.qlinear(x, p, None, "q4_k") for p in copies]
            )
            if bf16:
                row["bf16_us"] = 1e6 * time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in bf16])
            kernels = {"mma": fragment_linear}
            if M <= 8:  # the dp4a prototype reads x packed for 8 rows
                kernels["dp4a"] = fragment_dp4a_linear
            cells = []
            for kname, fn in kernels.items():
                for split in splits:
                    out = fn(xp, packs[0], M, x.dtype, split).double()
                    row[f"{kname}_err_vs_reference_split{split}"] = ((out - ref).norm() / ref.norm()).item()
                    row[f"{kname}_err_vs_qlinear_split{split}"] = ((out - op).norm() / op.norm()).item()
                    fns = [lambda p=p, s=split, f=fn: f(xp, p, M, x.dtype, s) for p in packs]
                    row[f"{kname}_split{split}_us"] = 1e6 * time_graph(fns)
                best = min(splits, key=lambda s: row[f"{kname}_split{s}_us"])
                row[f"{kname}_best_split"], row[f"{kname}_best_us"] = best, row[f"{kname}_split{best}_us"]
                cells += [row[f"{kname}_best_us"], best, f"{row[f'{kname}_err_vs_reference_split{best}']:.1e}"]
            rows.append(row)
            table.append([name, M, row["op_us"], row.get("bf16_us", "-"), *cells, *(["-"] * (6 - len(cells)))])
            best = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith("best_us"))
            print(f"{name} M={M}: qlinear {row['op_us']:.2f} us, {best}", flush=True)
        del copies, packs, bf16
        torch.cuda.empty_cache()
    print_table(
        "Q4_K, Llama-3-8B shapes: the dispatched qlinear against the fragment-order prototypes (us; err: vs reference)",
        ["shape", "M", "qlinear", "bf16", "mma", "split", "err", "dp4a", "split", "err"],
        table,
    )
    write_json(f"{datetime.date.today().isoformat()}-fragment-order.json", {"rows": rows}, path=args.json)


if __name__ == "__main__":
    main()
