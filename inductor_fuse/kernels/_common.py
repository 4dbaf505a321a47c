"""Shared pieces of the quantized-linear kernels.

- `_dp4a`: 4-way int8 dot product with int32 accumulate (PTX `dp4a` through inline asm on the GPU,
  a shift/mask emulation under TRITON_INTERPRET=1).
- `act_quant`: per-row, per-32-wide-K-group int8 quantization of the activation (W4A8), run once
  per call and shared by every weight format.
- `splitk_reduce`: sums split-K partials, adds the bias, casts to the output dtype.
- `MatvecConfig`, `GemmConfig` and `pick_config`: the small config spaces and the
  (kernel, fmt, M, N, K)-keyed tuner.
- `KernelSpec`: what one weight format's kernels are (each format file builds its SPEC; the
  registry, kernels/registry.py, collects them).
- The W4A8 matvec every format shares: `launch_matvec` (host), `matvec_kernel`, generic over the
  format's WEIGHT_CTX / LOAD / DOT functions, built of `matvec_prologue`, `matvec_units` (the K
  loop), `add_to_row` and `matvec_epilogue` (device).
- `loop_bound`: a runtime loop bound that Triton's interpreter also accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .. import config

# Whether Triton runs kernels on the CPU (TRITON_INTERPRET=1, Triton's own variable): read once,
# as triton.jit reads it when it decorates a kernel (a later change would not take effect there).
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


def interpreting() -> bool:
    return INTERPRETING.value


@triton.jit
def loop_bound(x):
    """x (a runtime scalar) as a `range` bound: x itself when compiled. Under TRITON_INTERPRET=1
    a scalar is a 1-element numpy array, which Triton 3.6's interpreter turns into a Python int
    with int(array), an error with numpy >= 2.4 ("only 0-dimensional arrays can be converted");
    so there the bound is taken out as a Python int (returned, not assigned: the interpreter
    turns every assigned value back into a tensor)."""
    if INTERPRETING:
        return x.handle.data.item()
    return x


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
    for s in range(loop_bound(S)):
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
    prefetch: bool = False  # double-buffer the next units' weights in registers (matvec_units)

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
    """The fastest of `candidates` for `key` = (kernel, fmt, M, N, K, ...), measured once.

    The first candidate (the default) is used under TRITON_INTERPRET=1, during CUDA-graph capture
    (no benchmarking allowed there) unless the key was tuned before, with config.settings.no_tune,
    and when `tune` is False unless config.settings.tune forces tuning.
    """
    if key in _TUNED:
        return _TUNED[key]
    if interpreting() or len(candidates) == 1:
        return candidates[0]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return candidates[0]
    if config.settings.no_tune or not (tune or config.settings.tune):
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
# Kernel specs: what the dispatcher, the GEMMs, tests and benchmarks know of a format's kernels.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    """One weight format's kernels (each kernels/<fmt>.py builds its SPEC; registry.KERNELS
    collects them by `fmt`)."""

    fmt: str  # the quant.FORMATS key, e.g. "q4_k"
    # the format's three @triton.jit functions of the W4A8 matvec (matvec_kernel below):
    weight_ctx: Any  # (p0, p1, p2, p3, rows_c, rs0, rs1, rs2, rs3, GROUP: constexpr) -> wctx
    load_units: Any  # LOAD (wctx, u, umask) -> w
    units_dot: Any  # DOT (w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM) -> accs
    unit: int  # weights per matvec unit: the kernel runs K // unit units per row
    plane_views: Callable  # planes -> the tensors the kernels read (e.g. uint8 viewed as int32)
    # @triton.jit (p0, p1, p2, p3, rows, k0, K, GROUP: constexpr, BLOCK_N: constexpr, BLOCK_K: constexpr)
    #   -> float32 [BLOCK_N, BLOCK_K // 32, 32], w[rows, k0 + 32 s + i]
    dequant_tile: Any
    matvec_configs: tuple  # MatvecConfig candidates; the first is the default
    matvec_max_m: int  # M <= this: act_quant + matvec
    fused_gemm_max_m: int  # M < this (and > matvec_max_m): fused Triton GEMM; else dequant + cuBLAS
    interleave: bool = False  # act_quant layout the matvec reads
    group: int = 0  # int4 group size (0: none)
    default_config: Callable | None = None  # (M, N, K) -> MatvecConfig; None: matvec_configs[0]


KERNELS: dict[str, KernelSpec] = {}  # fmt -> spec; filled by register_kernels, read via kernels.registry


def register_kernels(*specs: KernelSpec) -> tuple[KernelSpec, ...]:
    """Add each format's KernelSpec to KERNELS (a kernel file's ``(SPEC,) = register_kernels(KernelSpec(...))``)."""
    for spec in specs:
        if spec.fmt in KERNELS:
            raise ValueError(f"kernels for weight format {spec.fmt!r} are registered twice")
        KERNELS[spec.fmt] = spec
    return specs


# ---------------------------------------------------------------------------------------------
# The matvec launcher shared by every format: matvec_kernel (below) with the format's functions
#   matvec_kernel(xq, xd, xs32, xs16, p0, p1, p2, p3, bias, out, M, N, K, UNITS_PER_SPLIT,
#                 rs0, rs1, rs2, rs3, WEIGHT_CTX, LOAD, DOT, UNIT, GROUP, HAS_BIAS, SPLIT, PREFETCH,
#                 BLOCK_M, BLOCK_N, BLOCK_U, USE_ASM)
# rs_i: row stride of plane i (elements of its view), passed from the host so that Triton sees
# their divisibility by 16 and emits 16-byte loads.
# grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), split); a "unit" is the format's natural K step.
# ---------------------------------------------------------------------------------------------


def matvec_block_m(M: int) -> int:
    return min(triton.next_power_of_2(M), 8)


def launch_matvec(
    spec: KernelSpec,
    xa: QuantizedActivation,
    planes: Sequence[torch.Tensor],
    bias,
    M: int,
    N: int,
    K: int,
    cfg: MatvecConfig,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out [M, N] = spec's matvec over the plane views (config.settings.on_matvec_launch, when
    set, gets the compiled kernel)."""
    n_units = K // spec.unit
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
    compiled = matvec_kernel[grid](
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
        WEIGHT_CTX=spec.weight_ctx,
        LOAD=spec.load_units,
        DOT=spec.units_dot,
        UNIT=spec.unit,
        GROUP=spec.group,
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
    if config.settings.on_matvec_launch is not None:
        config.settings.on_matvec_launch(compiled)
    if split > 1:
        splitk_reduce(ws, bias, out)
    return out


# ---------------------------------------------------------------------------------------------
# The matvec. matvec_kernel is
#     pid_m, pid_k, rows, rows_c, u_lo, u_hi = matvec_prologue(N, K, UNITS_PER_SPLIT, UNIT, BLOCK_N)
#     wctx = WEIGHT_CTX(p0, p1, p2, p3, rows_c, rs0, rs1, rs2, rs3, GROUP)
#     accs = matvec_units(LOAD, DOT, wctx, xa, pid_m, M, K, u_lo, u_hi, PREFETCH, ...)
#     matvec_epilogue(accs, bias_ptr, out_ptr, pid_m, pid_k, rows, M, N, ...)
# with the format's three @triton.jit functions (constexpr arguments: KernelSpec.weight_ctx,
# load_units, units_dot; UNIT is KernelSpec.unit)
#     WEIGHT_CTX(...) -> wctx              the format's loop invariants (plane pointers, row
#                                          offsets, strides, the word index within a unit), built
#                                          once before the K loop, the order the kernels were tuned
#                                          with (a constexpr in wctx is returned as a constant)
#     LOAD(wctx, u, umask) -> w            the weights of units u [BLOCK_U] as DOT takes them (a
#                                          tuple: loaded, decoded where that is cheap)
#     DOT(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM) -> accs
#                                          w's contribution to the rows of x added to accs;
#                                          xa = (xq_ptr, xd_ptr, xs32_ptr, xs16_ptr)
# accs: 8 float32 [BLOCK_N, BLOCK_U] accumulators, one per row of x (BLOCK_M <= 8 of them live),
# summed over units only in the epilogue: no cross-thread reduction inside the K loop.
# ---------------------------------------------------------------------------------------------


@triton.jit
def matvec_prologue(N, K, UNITS_PER_SPLIT, UNIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """-> pid_m, pid_k, rows [BLOCK_N] (this program's output rows), rows_c (clamped to N - 1:
    loads need no row mask), [u_lo, u_hi) (this program's units along K)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_c = tl.minimum(rows, N - 1)
    n_units = K // UNIT
    u_lo = pid_k * UNITS_PER_SPLIT
    u_hi = tl.minimum(u_lo + UNITS_PER_SPLIT, n_units)
    return pid_m, pid_k, rows, rows_c, u_lo, u_hi


@triton.jit
def matvec_units(
    LOAD: tl.constexpr,
    DOT: tl.constexpr,
    wctx,
    xa,
    pid_m,
    M,
    K,
    u_lo,
    u_hi,
    PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    """The K loop over units [u_lo, u_hi), BLOCK_U at a time -> accs. With PREFETCH the weight
    loads are double-buffered in registers: the next units' loads fly while these compute."""
    ub = tl.arange(0, BLOCK_U)
    accs = (
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
        tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32),
    )
    if PREFETCH:
        u = u_lo + ub
        umask = u < u_hi
        w = LOAD(wctx, u, umask)
        for u0 in range(loop_bound(u_lo), loop_bound(u_hi), BLOCK_U):
            un = u0 + BLOCK_U + ub
            unmask = un < u_hi
            w_n = LOAD(wctx, un, unmask)
            accs = DOT(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM)
            w, u, umask = w_n, un, unmask
    else:
        for u0 in range(loop_bound(u_lo), loop_bound(u_hi), BLOCK_U):
            u = u0 + ub
            umask = u < u_hi
            w = LOAD(wctx, u, umask)
            accs = DOT(w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM)
    return accs


@triton.jit
def add_to_row(accs, part, MI: tl.constexpr):
    """accs with `part` added to accumulator MI (the row of x; chosen at compile time)."""
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = accs
    if MI == 0:
        acc0 += part
    if MI == 1:
        acc1 += part
    if MI == 2:
        acc2 += part
    if MI == 3:
        acc3 += part
    if MI == 4:
        acc4 += part
    if MI == 5:
        acc5 += part
    if MI == 6:
        acc6 += part
    if MI == 7:
        acc7 += part
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def matvec_epilogue(
    accs,
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
    """Sums each accumulator over its units (accs[i]: row m = pid_m * BLOCK_M + i) and stores the
    [BLOCK_M, BLOCK_N] tile: float32 partials at split pid_k when SPLIT, else (+ bias) cast to out."""
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = accs
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


@triton.jit
def matvec_kernel(
    xq_ptr,
    xd_ptr,
    xs32_ptr,
    xs16_ptr,  # xq int32 [M, K/4]; xd, xs32 f32 [M, K/32]; xs16 f32 [M, K/16]
    p0,
    p1,
    p2,
    p3,  # the format's plane views (KernelSpec.plane_views; unused ones repeat p0)
    bias_ptr,
    out_ptr,  # bias [N]; out [M, N] (or f32 [split, M, N] when SPLIT)
    M,
    N,
    K,
    UNITS_PER_SPLIT,
    rs0,
    rs1,
    rs2,
    rs3,  # rs_i: row strides of the planes
    WEIGHT_CTX: tl.constexpr,
    LOAD: tl.constexpr,
    DOT: tl.constexpr,
    UNIT: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    pid_m, pid_k, rows, rows_c, u_lo, u_hi = matvec_prologue(N, K, UNITS_PER_SPLIT, UNIT, BLOCK_N)
    wctx = WEIGHT_CTX(p0, p1, p2, p3, rows_c, rs0, rs1, rs2, rs3, GROUP)
    xa = (xq_ptr, xd_ptr, xs32_ptr, xs16_ptr)
    accs = matvec_units(LOAD, DOT, wctx, xa, pid_m, M, K, u_lo, u_hi, PREFETCH, BLOCK_M, BLOCK_N, BLOCK_U, USE_ASM)
    matvec_epilogue(accs, bias_ptr, out_ptr, pid_m, pid_k, rows, M, N, HAS_BIAS, SPLIT, BLOCK_M, BLOCK_N)
