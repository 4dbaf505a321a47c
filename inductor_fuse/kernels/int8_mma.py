"""W4A8 for a few rows of x on the int8 tensor cores: `int8_mma` (the dispatcher runs it for
matvec_max_m < M <= KernelSpec.int8_mma_max_m where w4a16_mma does not: float32 x, Q4_K 5..32 and
Q6_K 7..32).

The matvec (kernels/<fmt>.py, `_common.matvec_kernel`) spends one `dp4a` per 4 weights per row of
x, so its time grows with M: on an H200, Q4_K gate_up 19.7 us at M = 1, 50.1 at M = 4, 169.0 at
M = 16. Here the rows of x are one side of an int8 `tl.dot` (x padded to 16 rows; with the weights
as the first operand, Q4_K's default, a wgmma whose A fragments are the nibbles decoded in
registers), so the weights are decoded once for all rows and the products cost the tensor cores,
not the ALUs: gate_up 77.8 us at M = 16 (docs/kernels.md, "A few rows").
Each 32-weight sub-block is one dot of K = 32 whose int32 result gets the sub-block's scales:

    Q4_K (a unit = 64 weights: 32 qs bytes, low nibbles sub-block 2u, high nibbles 2u + 1):
        acc += dot(xq_lo, q_lo) * (xd_lo * d*sc_lo) + dot(xq_hi, q_hi) * (xd_hi * d*sc_hi)
               - xs32_lo * dmin*m_lo - xs32_hi * dmin*m_hi
    Q6_K (a unit = 128 weights, half h of a block: ql 64 bytes and qh 32 bytes, 4 sub-blocks r;
          codes q - 32 in int8; a scale per 16 weights, so each sub-block is two dots, x's other
          half zeroed):
        acc += (dot(xq_r[:16], q_r) * sc_2s + dot(xq_r[16:], q_r) * sc_2s+1) * (xd_s * d)

x comes quantized as act_quant makes it for every format's matvec (xq int8, xd and xs32 per row
per 32-tile, natural order): the act_quant rule's one quantize_act serves these kernels too. The
integer dots are exact; the result equals `x_dq @ W.T` (x_dq the dequantized int8 activation) up
to float32 rounding, as the matvec's does. Programs: BLOCK_N weight rows x BLOCK_M rows of x, and
SPLIT_K programs along K when the rows alone make too few programs (float32 partials, summed by
`splitk_reduce` with the bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import QuantizedActivation, act_quant, interpreting, loop_bound, splitk_reduce

_UNIT = {"q4_k": 64, "q6_k": 128}  # weights per K step of each format's kernel
FORMATS = tuple(_UNIT)  # the formats with an int8_mma kernel
MAX_M = 64


@dataclass(frozen=True)
class MmaConfig:
    block_n: int = 64
    block_m: int = 16
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    weights_first: bool = True  # the weights are the dot's first operand (out^T = W x^T)


@triton.jit
def _mma_prologue(M, N, K, UNITS, UNITS_PER_SPLIT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WT: tl.constexpr):
    # this program's weight rows and rows of x (both clamped in range: the store masks), their
    # row offsets, its units [u0, u1) of K, and the zeroed accumulator in its orientation
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn64 = tl.minimum(rn, N - 1).to(tl.int64)
    rmc = tl.minimum(rm, M - 1)
    xrow = rmc.to(tl.int64) * K
    u0 = pid_s * UNITS_PER_SPLIT
    u1 = tl.minimum(u0 + UNITS_PER_SPLIT, UNITS)
    acc = tl.zeros([BLOCK_N, BLOCK_M] if WT else [BLOCK_M, BLOCK_N], dtype=tl.float32)
    return rn, rm, rn64, rmc, xrow, u0, u1, pid_s, acc


@triton.jit
def _idot(x, w, WT: tl.constexpr):
    # x int8 [BM, 32], w int8 [BN, 32] -> int32 [BN, BM] (WT: the weights are the first operand, so
    # their codes, decoded in registers, feed the MMA as its A fragments) or [BM, BN]
    if WT:
        return tl.dot(w, tl.trans(x), out_dtype=tl.int32)
    else:
        return tl.dot(x, tl.trans(w), out_dtype=tl.int32)


@triton.jit
def _w(b, WT: tl.constexpr):
    # b [BN] (weight side), broadcastable against the accumulator
    if WT:
        return b[:, None]
    else:
        return b[None, :]


@triton.jit
def _outer(a, b, WT: tl.constexpr):
    # a [BM] (x side), b [BN] (weight side) -> their product in the accumulator's orientation
    if WT:
        return b[:, None] * a[None, :]
    else:
        return a[:, None] * b[None, :]


@triton.jit
def _mma_store(
    acc, rn, rm, M, N, pid_s, out_ptr, bias_ptr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, WT: tl.constexpr
):
    # acc: [BLOCK_M, BLOCK_N], or [BLOCK_N, BLOCK_M] (weights first): stored as out[m, n]
    if not WT:
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    else:
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        offs = rm[None, :].to(tl.int64) * N + rn[:, None]
    if SPLIT:  # float32 partials [S, M, N]; splitk_reduce adds the bias
        tl.store(out_ptr + pid_s.to(tl.int64) * M * N + offs, acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += _w(tl.load(bias_ptr + tl.minimum(rn, N - 1)).to(tl.float32), WT)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _q4k_scales(sm_ptr, dm_ptr, rn64, xd_ptr, xs_ptr, rmc, K, u):
    # unit u's scales: (sc_lo, m_lo, sc_hi, m_hi) [BN] int32, d and dmin [BN], and x's xd, xs32 of
    # both sub-blocks [BM]. Triton pipelines only the loads that feed a dot (the qs bytes): these
    # the loop loads one unit ahead itself, or each step would wait a global load's latency.
    smw = tl.load(sm_ptr + rn64 * (K // 64) + u)
    d = tl.load(dm_ptr + rn64 * (K // 128) + (u // 4) * 2)
    dmin = tl.load(dm_ptr + rn64 * (K // 128) + (u // 4) * 2 + 1)
    g = rmc * (K // 32) + 2 * u
    return smw, d, dmin, tl.load(xd_ptr + g), tl.load(xd_ptr + g + 1), tl.load(xs_ptr + g), tl.load(xs_ptr + g + 1)


@triton.jit
def _q4k_mma_kernel(
    xq_ptr,  # int8 [M, K]
    xd_ptr,  # f32 [M, K/32]
    xs_ptr,  # f32 [M, K/32] (xd * sum(xq) per tile)
    qs_ptr,  # uint8 [N, K/2]
    sm_ptr,  # int32 [N, K/64]: per unit (sc_lo, m_lo, sc_hi, m_hi)
    dm_ptr,  # f16 [N, K/128]: per block (d, dmin)
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
    WT: tl.constexpr,
):
    rn, rm, rn64, rmc, xrow, u0, u1, pid_s, acc = _mma_prologue(M, N, K, K // 64, UNITS_PER_SPLIT, BLOCK_M, BLOCK_N, WT)
    l = tl.arange(0, 32)
    nxt = _q4k_scales(sm_ptr, dm_ptr, rn64, xd_ptr, xs_ptr, rmc, K, u0)
    for u in range(loop_bound(u0), loop_bound(u1)):
        smw, d, dmin, xd_lo, xd_hi, xs_lo, xs_hi = nxt
        nxt = _q4k_scales(sm_ptr, dm_ptr, rn64, xd_ptr, xs_ptr, rmc, K, tl.minimum(u + 1, u1 - 1))
        b = tl.load(qs_ptr + tl.multiple_of(rn64 * (K // 2), 16)[:, None] + (u * 32 + l)[None, :])
        x_lo = tl.load(xq_ptr + xrow[:, None] + (u * 64 + l)[None, :])
        x_hi = tl.load(xq_ptr + xrow[:, None] + (u * 64 + 32 + l)[None, :])
        s_lo = _idot(x_lo, (b & 15).to(tl.int8), WT)
        s_hi = _idot(x_hi, (b >> 4).to(tl.int8), WT)
        d = d.to(tl.float32)
        dmin = dmin.to(tl.float32)
        dsc_lo = d * (smw & 0xFF).to(tl.float32)
        dm_lo = dmin * ((smw >> 8) & 0xFF).to(tl.float32)
        dsc_hi = d * ((smw >> 16) & 0xFF).to(tl.float32)
        dm_hi = dmin * ((smw >> 24) & 0xFF).to(tl.float32)
        acc += s_lo.to(tl.float32) * _outer(xd_lo, dsc_lo, WT)
        acc += s_hi.to(tl.float32) * _outer(xd_hi, dsc_hi, WT)
        acc -= _outer(xs_lo, dm_lo, WT) + _outer(xs_hi, dm_hi, WT)
    _mma_store(acc, rn, rm, M, N, pid_s, out_ptr, bias_ptr, HAS_BIAS, SPLIT, WT)


@triton.jit
def _q6k_sub_block(acc, q, xq_ptr, xrow, xd_ptr, rmc, sc_ptr, rn64, d, s, K, l, WT: tl.constexpr):
    # one 32-weight sub-block s: codes q int8 [BN, 32], a scale per 16 weights
    x = tl.load(xq_ptr + xrow[:, None] + (s * 32 + l)[None, :])
    first = (l < 16)[None, :]
    s_a = _idot(tl.where(first, x, 0).to(tl.int8), q, WT)
    s_b = _idot(tl.where(first, 0, x).to(tl.int8), q, WT)
    sc_a = tl.load(sc_ptr + rn64 * (K // 16) + 2 * s).to(tl.float32)
    sc_b = tl.load(sc_ptr + rn64 * (K // 16) + 2 * s + 1).to(tl.float32)
    xd = tl.load(xd_ptr + rmc * (K // 32) + s)
    part = s_a.to(tl.float32) * _w(sc_a, WT) + s_b.to(tl.float32) * _w(sc_b, WT)
    return acc + part * _outer(xd, d, WT)


@triton.jit
def _q6k_mma_kernel(
    xq_ptr,  # int8 [M, K]
    xd_ptr,  # f32 [M, K/32]
    ql_ptr,  # uint8 [N, K/2]
    qh_ptr,  # uint8 [N, K/4]
    sc_ptr,  # int8 [N, K/16]
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
    WT: tl.constexpr,
):
    rn, rm, rn64, rmc, xrow, u0, u1, pid_s, acc = _mma_prologue(
        M, N, K, K // 128, UNITS_PER_SPLIT, BLOCK_M, BLOCK_N, WT
    )
    l = tl.arange(0, 32)
    for u in range(loop_bound(u0), loop_bound(u1)):  # u: half u % 2 of block u // 2
        ql = tl.multiple_of(rn64 * (K // 2), 16)[:, None] + (u * 64 + l)[None, :]
        ql0 = tl.load(ql_ptr + ql).to(tl.int32)
        ql1 = tl.load(ql_ptr + ql + 32).to(tl.int32)
        qh = tl.load(qh_ptr + tl.multiple_of(rn64 * (K // 4), 16)[:, None] + (u * 32 + l)[None, :]).to(tl.int32)
        d = tl.load(d_ptr + rn64 * (K // 256) + u // 2).to(tl.float32)
        q0 = ((ql0 & 15) | ((qh & 3) << 4)) - 32
        q1 = ((ql1 & 15) | (((qh >> 2) & 3) << 4)) - 32
        q2 = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) - 32
        q3 = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) - 32
        acc = _q6k_sub_block(acc, q0.to(tl.int8), xq_ptr, xrow, xd_ptr, rmc, sc_ptr, rn64, d, 4 * u, K, l, WT)
        acc = _q6k_sub_block(acc, q1.to(tl.int8), xq_ptr, xrow, xd_ptr, rmc, sc_ptr, rn64, d, 4 * u + 1, K, l, WT)
        acc = _q6k_sub_block(acc, q2.to(tl.int8), xq_ptr, xrow, xd_ptr, rmc, sc_ptr, rn64, d, 4 * u + 2, K, l, WT)
        acc = _q6k_sub_block(acc, q3.to(tl.int8), xq_ptr, xrow, xd_ptr, rmc, sc_ptr, rn64, d, 4 * u + 3, K, l, WT)
    _mma_store(acc, rn, rm, M, N, pid_s, out_ptr, bias_ptr, HAS_BIAS, SPLIT, WT)


def split_k_outputs(x: torch.Tensor, N: int, units: int, split_k: int, step: int = 1):
    """K's `units` dealt to at most `split_k` programs, `step` units at a time -> (units per split,
    splits: none empty), out [M, N] in x.dtype, and what the kernels write: out itself, or float32
    partials [splits, M, N] that `splitk_reduce` sums into out (int8_mma, w4a16_mma)."""
    M = x.shape[0]
    per_split = triton.cdiv(units // step, split_k) * step
    split = triton.cdiv(units, per_split)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    dst = out if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
    return per_split, split, out, dst


def default_config(fmt: str, M: int, N: int, K: int) -> MmaConfig:
    """Measured on an H200 (kernel alone, CUDA graph over rotated weight copies, M = 16, every
    config of benchmarks/bench_kernels.py --small-m --mma-sweep on the Llama-3-8B shapes):
    Q4_K: weights first, 128 rows, K split 8 ways (qkv, o, gate_up, down all best there);
    Q6_K: x first, 64 rows, split 8 (down; the output head was best at 128 rows, split 4, 5% faster).
    BLOCK_M: x's rows padded to 16, at most 64. Each split keeps at least 4 units."""
    if interpreting():
        return MmaConfig(block_n=16, block_m=16, num_warps=1, num_stages=1)
    block_m = min(max(16, triton.next_power_of_2(M)), MAX_M)
    split = max(1, min(8, K // _UNIT[fmt] // 4))
    if fmt == "q4_k":
        return MmaConfig(block_n=128, block_m=block_m, split_k=split, weights_first=True)
    return MmaConfig(block_n=64, block_m=block_m, split_k=split, weights_first=False)


def int8_mma(
    x: torch.Tensor,
    planes,
    bias: torch.Tensor | None,
    fmt: str,
    xa: QuantizedActivation | None = None,
    config: MmaConfig | None = None,
) -> torch.Tensor:
    """x [M, K] float (contiguous) -> [M, N] in x.dtype, W4A8 on the int8 tensor cores. `xa`: x as
    act_quant quantized it (natural order), when the act_quant rule already did."""
    if fmt not in FORMATS:
        raise NotImplementedError(f"int8_mma: no kernel for {fmt!r} (formats: {FORMATS})")
    M, K = x.shape
    N = planes[0].shape[0]
    if K % 256:
        raise ValueError(f"int8_mma: {fmt} needs K % 256 == 0, got K = {K}")
    if xa is None:
        xa = act_quant(x)
    cfg = config or default_config(fmt, M, N, K)
    per_split, split, out, dst = split_k_outputs(x, N, K // _UNIT[fmt], cfg.split_k)
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, cfg.block_m), split)
    xq = xa.xq.view(torch.int8)
    common = dict(
        HAS_BIAS=bias is not None,
        SPLIT=split > 1,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        WT=cfg.weights_first,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    b = bias if bias is not None else out
    if fmt == "q4_k":
        qs, sm, dm = planes
        sm32 = sm.view(torch.int32)
        _q4k_mma_kernel[grid](xq, xa.xd, xa.xs32, qs, sm32, dm, b, dst, M, N, K, per_split, **common)
    else:
        ql, qh, sc, d = planes
        _q6k_mma_kernel[grid](xq, xa.xd, ql, qh, sc, d, b, dst, M, N, K, per_split, **common)
    if split > 1:
        splitk_reduce(dst, bias, out)
    return out
