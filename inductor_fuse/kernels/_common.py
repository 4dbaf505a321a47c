"""Shared pieces of the quantized-linear kernels.

- `_dp4a`: 4-way int8 dot product with int32 accumulate (PTX `dp4a` through inline asm on the GPU,
  a shift/mask emulation under TRITON_INTERPRET=1).
- `act_quant`: per-row, per-32-wide-K-group int8 quantization of the activation (W4A8), run once
  per call and shared by every weight format.
- `splitk_reduce`: sums split-K partials, adds the bias, casts to the output dtype.
- `MatvecConfig` and `pick_config`: the small config space and the (M, N, K, fmt)-keyed tuner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------
# dp4a
#   dp4a(a, b) = sum_{i<4} a_i * b_i, a_i = byte i of a (unsigned 0..255 or signed), b_i = signed
#   byte i of b. One instruction for 4 multiply-adds: the reason weights stay integer until the
#   per-group scale is applied to the integer partial sum.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dp4a(a, b, SIGNED_A: tl.constexpr, USE_ASM: tl.constexpr):
    # a, b: int32 tensors of one shape (4 packed bytes each) -> int32
    if USE_ASM:
        zero = tl.zeros_like(a)
        if SIGNED_A:
            r = tl.inline_asm_elementwise(
                "dp4a.s32.s32 $0, $1, $2, $3;",
                "=r,r,r,r",
                [a, b, zero],
                dtype=tl.int32,
                is_pure=True,
                pack=1,
            )
        else:
            r = tl.inline_asm_elementwise(
                "dp4a.u32.s32 $0, $1, $2, $3;",
                "=r,r,r,r",
                [a, b, zero],
                dtype=tl.int32,
                is_pure=True,
                pack=1,
            )
    else:
        r = tl.zeros_like(a)
        for i in tl.static_range(4):
            if SIGNED_A:
                ai = (a << (24 - 8 * i)) >> 24
            else:
                ai = (a >> (8 * i)) & 0xFF
            bi = (b << (24 - 8 * i)) >> 24
            r += ai * bi
    return r


# ---------------------------------------------------------------------------------------------
# Activation quantization (per row m, per 32-group g of K):
#   d[m,g]   = max_l |x[m, 32g+l]| / 127
#   q[m,k]   = round_half_away(x[m,k] / d[m,g])          int8 in [-127, 127]
#   s16[m,h] = d[m, h//2] * sum_{l<16} q[m, 16h+l]        (per 16-group; Q6_K's -32 offset)
#   s32[m,g] = s16[m,2g] + s16[m,2g+1]                    (mins / offsets / zero points)
# so that sum_k w[n,k] * (d*q)[m,k] is what every W4A8 kernel computes exactly.
# INTERLEAVE permutes each 32 elements so that element l lands at (l%2)*16 + (l//8)*4 + (l%8)//2:
# the even elements of each 8 (the low nibbles of one int4_g* weight word) form x word l//8, the
# odd ones (high nibbles) x word 4 + l//8 - so both nibble halves meet contiguous x words.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _act_quant_kernel(
    x_ptr,
    xq_ptr,
    xd_ptr,
    xs32_ptr,
    xs16_ptr,  # x [M, K] float; xq int8 [M, K]; xd, xs32 f32 [M, K/32]; xs16 f32 [M, K/16]
    K,
    stride_xm,
    INTERLEAVE: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    m = tl.program_id(0)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BG] 32-groups
    l = tl.arange(0, 32)
    G = K // 32
    gmask = g < G
    x = tl.load(x_ptr + m * stride_xm + g[:, None] * 32 + l[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)  # [BG]
    d = amax / 127.0
    inv = tl.where(amax > 0, 127.0 / amax, 0.0)
    v = x * inv[:, None]
    q = (v + tl.where(v >= 0, 0.5, -0.5)).to(tl.int32)  # round half away from zero
    q = tl.minimum(tl.maximum(q, -127), 127)
    s_lo = tl.sum(tl.where(l[None, :] < 16, q, 0), axis=1).to(tl.float32) * d
    s_hi = tl.sum(tl.where(l[None, :] >= 16, q, 0), axis=1).to(tl.float32) * d
    tl.store(xd_ptr + m * G + g, d, mask=gmask)
    tl.store(xs32_ptr + m * G + g, s_lo + s_hi, mask=gmask)
    tl.store(xs16_ptr + m * 2 * G + 2 * g, s_lo, mask=gmask)
    tl.store(xs16_ptr + m * 2 * G + 2 * g + 1, s_hi, mask=gmask)
    if INTERLEAVE:
        dst = (l % 2) * 16 + (l // 8) * 4 + (l % 8) // 2
    else:
        dst = l
    tl.store(xq_ptr + m * K + g[:, None] * 32 + dst[None, :], q.to(tl.int8), mask=gmask[:, None])


class QuantizedActivation:
    """xq int32 [M, K/4] (4 int8 per word), xd / xs32 float32 [M, K/32], xs16 float32 [M, K/16]."""

    def __init__(self, xq: torch.Tensor, xd: torch.Tensor, xs32: torch.Tensor, xs16: torch.Tensor):
        self.xq, self.xd, self.xs32, self.xs16 = xq, xd, xs32, xs16


def act_quant(x: torch.Tensor, interleave: bool = False) -> QuantizedActivation:
    # x: [M, K] float, K % 32 == 0
    M, K = x.shape
    if K % 32 != 0:
        raise ValueError(f"act_quant: K must be a multiple of 32, got {K}")
    x = x if x.stride(1) == 1 else x.contiguous()
    xq = torch.empty((M, K), dtype=torch.int8, device=x.device)
    xd = torch.empty((M, K // 32), dtype=torch.float32, device=x.device)
    xs32 = torch.empty((M, K // 32), dtype=torch.float32, device=x.device)
    xs16 = torch.empty((M, K // 16), dtype=torch.float32, device=x.device)
    BLOCK_G = 8 if interpreting() else 32
    grid = (M, triton.cdiv(K // 32, BLOCK_G))
    _act_quant_kernel[grid](x, xq, xd, xs32, xs16, K, x.stride(0), INTERLEAVE=interleave, BLOCK_G=BLOCK_G, num_warps=4)
    return QuantizedActivation(xq.view(torch.int32), xd, xs32, xs16)


def act_quant_reference(x: torch.Tensor, interleave: bool = False) -> torch.Tensor:
    """Pure-torch oracle: the dequantized activation (d * q) as float32 [M, K], natural order."""
    M, K = x.shape
    xg = x.float().reshape(M, K // 32, 32)
    amax = xg.abs().amax(-1, keepdim=True)
    d = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    v = xg * inv
    q = torch.trunc(v + torch.where(v >= 0, 0.5, -0.5)).clamp(-127, 127)
    return (q * d).reshape(M, K)


# ---------------------------------------------------------------------------------------------
# Split-K reduction: out[m, n] = sum_s ws[s, m, n] (+ bias[n]), cast to out's dtype.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _splitk_reduce_kernel(ws_ptr, bias_ptr, out_ptr, MN, N, S, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(S):
        acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def splitk_reduce(ws: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    # ws: f32 [S, M, N]; out: [M, N]
    S, M, N = ws.shape
    BLOCK = 1024
    grid = (triton.cdiv(M * N, BLOCK),)
    _splitk_reduce_kernel[grid](
        ws, bias if bias is not None else out, out, M * N, N, S, HAS_BIAS=bias is not None, BLOCK=BLOCK, num_warps=4
    )


# ---------------------------------------------------------------------------------------------
# Configs and the tuner
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatvecConfig:
    block_n: int  # output rows per program
    block_u: int  # format units (see each kernel) per K step
    split_k: int = 1  # programs along K (partials reduced by splitk_reduce)
    num_warps: int = 4
    num_stages: int = 1
    prefetch: bool = False  # double-buffer the next units' loads in registers (q4_k, q6_k)

    def __post_init__(self):
        for v in (self.block_n, self.block_u):
            if v <= 0 or v & (v - 1):
                raise ValueError(f"MatvecConfig: block sizes must be powers of two, got {self}")
        if self.split_k < 1:
            raise ValueError(f"MatvecConfig: split_k must be >= 1, got {self.split_k}")


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8


_TUNED: dict[tuple, object] = {}


def pick_config(key: tuple, candidates: Sequence, bench: Callable[[object], None], tune: bool = True):
    """The fastest of `candidates` for `key` = (kernel, M, N, K, fmt, ...), measured once.

    The first candidate (the default) is used under TRITON_INTERPRET=1, during CUDA-graph capture
    (no benchmarking allowed there) unless the key was tuned before, with INDUCTOR_FUSE_NO_TUNE=1,
    and when `tune` is False. INDUCTOR_FUSE_TUNE=1 forces tuning.
    """
    if key in _TUNED:
        return _TUNED[key]
    if interpreting() or len(candidates) == 1:
        return candidates[0]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return candidates[0]
    if os.environ.get("INDUCTOR_FUSE_NO_TUNE", "0") == "1":
        return candidates[0]
    if not tune and os.environ.get("INDUCTOR_FUSE_TUNE", "0") != "1":
        return candidates[0]
    best, best_t = candidates[0], float("inf")
    for c in candidates:
        try:
            t = triton.testing.do_bench(lambda c=c: bench(c), warmup=5, rep=25, return_mode="median")
        except Exception:  # a config that does not compile (resources) is skipped
            continue
        if t < best_t:
            best, best_t = c, t
    _TUNED[key] = best
    return best


def tuned_configs() -> dict:
    return dict(_TUNED)


# ---------------------------------------------------------------------------------------------
# The matvec launcher shared by every format (each format file passes its kernel).
# Every matvec kernel has the signature
#   kernel(xq, xd, xs32, xs16, p0, p1, p2, p3, bias, out, M, N, K, UNITS_PER_SPLIT,
#          rs0, rs1, rs2, rs3, GROUP, HAS_BIAS, SPLIT, PREFETCH, BLOCK_M, BLOCK_N, BLOCK_U, USE_ASM)
# s_i: row stride of plane i (elements of its view), passed from the host so that Triton sees
# their divisibility by 16 and emits 16-byte loads.
# grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), split); a "unit" is the format's natural K step.
# ---------------------------------------------------------------------------------------------


LAST_COMPILED = None  # the last matvec launch's compiled kernel (registers, spills, asm: benchmarks)


def matvec_block_m(M: int) -> int:
    return min(triton.next_power_of_2(M), 8)


def launch_matvec(
    kernel,
    xa: QuantizedActivation,
    planes: Sequence[torch.Tensor],
    bias,
    M: int,
    N: int,
    K: int,
    n_units: int,
    cfg: MatvecConfig,
    out_dtype: torch.dtype,
    group: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    dev = xa.xq.device
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype, device=dev)
    ps = list(planes) + [planes[0]] * (4 - len(planes))
    block_m = matvec_block_m(M)
    ups = triton.cdiv(triton.cdiv(n_units, cfg.split_k), cfg.block_u) * cfg.block_u
    split = triton.cdiv(n_units, ups)
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, block_m), split)
    use_asm = not interpreting()
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=dev)
        dst = ws
    else:
        dst = out
    global LAST_COMPILED
    LAST_COMPILED = kernel[grid](
        xa.xq,
        xa.xd,
        xa.xs32,
        xa.xs16,
        ps[0],
        ps[1],
        ps[2],
        ps[3],
        bias if bias is not None else dst,
        dst,
        M,
        N,
        K,
        ups,
        ps[0].stride(0),
        ps[1].stride(0),
        ps[2].stride(0),
        ps[3].stride(0),
        GROUP=group,
        HAS_BIAS=bias is not None,
        SPLIT=split > 1,
        PREFETCH=cfg.prefetch,
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_U=cfg.block_u,
        USE_ASM=use_asm,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split > 1:
        splitk_reduce(ws, bias, out)
    return out


@triton.jit
def _matvec_epilogue(
    acc0,
    acc1,
    acc2,
    acc3,
    acc4,
    acc5,
    acc6,
    acc7,
    bias_ptr,
    out_ptr,
    pid_m,
    pid_k,
    rows,
    M,
    N,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # acc_i: f32 [BLOCK_N, BLOCK_U] partial sums of row m = pid_m * BLOCK_M + i (i < BLOCK_M), summed
    # over units only here, once: no cross-thread reduction inside the K loop.
    mrow = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc = tl.where(mrow[:, None] == 0, tl.sum(acc0, axis=1)[None, :], acc)
    if BLOCK_M > 1:
        acc = tl.where(mrow[:, None] == 1, tl.sum(acc1, axis=1)[None, :], acc)
    if BLOCK_M > 2:
        acc = tl.where(mrow[:, None] == 2, tl.sum(acc2, axis=1)[None, :], acc)
        acc = tl.where(mrow[:, None] == 3, tl.sum(acc3, axis=1)[None, :], acc)
    if BLOCK_M > 4:
        acc = tl.where(mrow[:, None] == 4, tl.sum(acc4, axis=1)[None, :], acc)
        acc = tl.where(mrow[:, None] == 5, tl.sum(acc5, axis=1)[None, :], acc)
        acc = tl.where(mrow[:, None] == 6, tl.sum(acc6, axis=1)[None, :], acc)
        acc = tl.where(mrow[:, None] == 7, tl.sum(acc7, axis=1)[None, :], acc)
    mrow = pid_m * BLOCK_M + mrow
    mask = (mrow[:, None] < M) & (rows[None, :] < N)
    if SPLIT:
        tl.store(out_ptr + pid_k * M * N + mrow[:, None] * N + rows[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            b = tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
            acc = acc + b[None, :]
        tl.store(out_ptr + mrow[:, None] * N + rows[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
