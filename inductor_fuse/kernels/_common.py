"""Shared pieces of the quantized-linear kernels.

- `_dp4a`: 4-way int8 dot product with int32 accumulate (PTX `dp4a` through inline asm on the GPU,
  a shift/mask emulation under TRITON_INTERPRET=1).
- `act_quant`: per-row, per-32-wide-K-group int8 quantization of the activation (W4A8), run once
  per call and shared by every weight format; `quantize_tiles`, its formula, which the RMSNorm
  that quantizes its own output (kernels/norm_quant.py) shares.
- `prefetch_l2` / `prefetch_planes_l2`: ask L2 for a matvec program's next weights (PTX
  prefetch.global.L2), before its PDL wait (`l2_prefetch_args`, config.settings.l2_prefetch).
- `splitk_reduce`: sums split-K partials, adds the bias, casts to the output dtype.
- `MatvecConfig`, `GemmConfig` and `pick_config`: the small config spaces and the
  (kernel, fmt, M, N, K)-keyed tuner.
- `KernelSpec`: what one weight format's kernels are (each format file builds its SPEC; the
  registry, kernels/registry.py, collects them).
- The W4A8 matvec every format shares: `launch_matvec` (host), `matvec_kernel`, generic over the
  format's LOAD / DECODE / ROW_DOT functions, built of `matvec_prologue`, `matvec_units` (the K
  loop; its PDL wait in `wait_after_first_step`), `matvec_step`, `add_to_row` and
  `matvec_epilogue` (device), and the helpers the format functions read planes and x with
  (`unit_words`, `unit_scalars`, `x_words`, `x_group`, `x_scales`, `group_dot`, `dot_pair`).
- `loop_bound`: a runtime loop bound that Triton's interpreter also accepts.
- `kernel_or_reference`: the body every op's CUDA registration shares: the kernel, or the
  pure-torch reference (and a WARNING once per error) when the kernel raises.
- `glu_code`: a GLU activation's name (quant.op.GLU_ACTS) as the matvec's GLU constexpr.
- `act_mul`: act(gate) * up of an interleaved gate|up output, one launch (the GLU step of the
  paths that do not fuse it: glu_linear above its fused rows, the quantized GEMMs, split-K).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .. import config
from ..quant.op import GLU_ACTS

# Whether Triton runs kernels on the CPU (TRITON_INTERPRET=1, Triton's own variable): read once,
# as triton.jit reads it when it decorates a kernel (a later change would not take effect there).
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


def interpreting() -> bool:
    return INTERPRETING.value


def pdl(device: torch.device) -> bool:
    """Whether the kernels launch as programmatic dependent launches on `device`
    (config.settings.pdl; CUDA sm_90+, not under the interpreter): launched with `launch_pdl`
    (`pdl_launch`), each kernel waits for the kernel before it (griddepcontrol.wait) before it reads
    anything that one writes; the matvec loads its first weights before that wait; the small kernels
    that make a matvec's x (act_quant, the norm, the attention's merge) then let their dependents
    start (griddepcontrol.launch_dependents: a hint; the wait still waits for their whole grid and its
    stores). docs/kernels.md, "PDL"."""
    return config.settings.pdl and device.type == "cuda" and not interpreting() and _capability(device) >= (9, 0)


def pdl_early(device: torch.device) -> bool:
    """Whether the matvec and the rope kernel, PDL-launched (`pdl`), also let the kernel after them
    start as soon as their own programs have started (griddepcontrol.launch_dependents right after
    their wait), and the attention's split kernel lets the merge start once its programs are past
    their loop: config.settings.pdl_early, resolved by config.pdl_early_wanted ("auto": by the size of
    the compiled graph being run). The next kernel still waits for their whole grid."""
    return config.pdl_early_wanted() and pdl(device)


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """The launch option of a kernel with a PDL constexpr: {"launch_pdl": True} where pdl(device)."""
    return {"launch_pdl": True} if pdl(device) else {}


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@functools.cache
def num_sms(device: torch.device) -> int:
    """The device's SM count (it sizes grids: dequant_mm's chunks, decode attention's splits); 1 off CUDA."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def f16_pair(w):
    """An int32 word holding two float16 (Q4_K's (d, dmin) of a block: d in the low half) -> both
    as float32."""
    lo = (w & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


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
# The CUDA registrations' fallback: a kernel that raises (cannot compile, or take the call) is
# replaced by the pure-torch reference for that call, with one WARNING per op, format and error.
# ---------------------------------------------------------------------------------------------

log = logging.getLogger("inductor_fuse")
T = TypeVar("T")


def kernel_or_reference(
    what: str,
    kernel: Callable[..., T],
    reference: Callable[..., T],
    *args: Any,
    instead: str = "the pure-torch reference",
) -> T:
    """kernel(*args), or reference(*args) when the kernel raises anything but a CUDA out-of-memory
    error (re-raised: the reference needs more memory, not less); then a WARNING names `what` (the
    op, and the format where there are several: "q4_k", "q4_k GLU", "depthwise_conv1d"), the
    error's type and first line, and `instead` (what runs), once per distinct (what, error,
    first line, instead). Validate the arguments before: a ValueError of the kernel is a fallback
    here, not an error. Pass the kernel as a module attribute read at call time
    (``dispatch.qlinear_cuda``, a module-level name) so that tests can replace it."""
    try:
        return kernel(*args)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference needs more memory, not less
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        warn_kernel_fallback(what, type(e).__name__, str(e).splitlines()[0] if str(e) else "", instead)
        return reference(*args)


@functools.cache
def warn_kernel_fallback(what: str, error: str, message: str, instead: str) -> None:
    """kernel_or_reference's WARNING, once per distinct arguments (cache_clear() to hear it again)."""
    log.warning(
        "inductor_fuse: the %s CUDA kernel failed (%s: %s); this call and others like it run %s: correct, slower",
        what,
        error,
        message,
        instead,
    )


# ---------------------------------------------------------------------------------------------
# dp4a
#   dp4a(a, b) = sum_{i<4} a_i * b_i, a_i = byte i of a (unsigned 0..255 or signed), b_i = signed
#   byte i of b. One instruction for 4 multiply-adds: the reason weights stay integer until the
#   per-group scale is applied to the integer partial sum.
# ---------------------------------------------------------------------------------------------


_DP4A_S8: tl.constexpr = tl.constexpr("dp4a.s32.s32 $0, $1, $2, $3;")
_DP4A_U8: tl.constexpr = tl.constexpr("dp4a.u32.s32 $0, $1, $2, $3;")


@triton.jit
def _dp4a(a, b, SIGNED_A: tl.constexpr, USE_ASM: tl.constexpr):
    # a, b: int32 tensors of one shape (4 packed bytes each) -> int32
    if USE_ASM:
        r = tl.inline_asm_elementwise(
            _DP4A_S8 if SIGNED_A else _DP4A_U8,
            "=r,r,r,r",
            [a, b, tl.zeros_like(a)],
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


_PREFETCH_L2: tl.constexpr = tl.constexpr("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;")


@triton.jit
def prefetch_l2(p, row_off, row_bytes, u_a, u_b, n_units, BLOCK_N: tl.constexpr):
    """Ask L2 for units [u_a, u_b) of rows row_off [BLOCK_N] (elements of p's view) of one weight
    plane, row_bytes bytes a row (0: a plane not used, nothing asked): PTX prefetch.global.L2 of
    each 128-byte line, nothing waited for, nothing read into registers. A unit's bytes are taken
    as u * row_bytes / n_units (every plane's row is in unit order)."""
    b_a = u_a * row_bytes // n_units
    b_b = (u_b * row_bytes + n_units - 1) // n_units
    # one line more than the span's length, the offsets clamped to its last byte: an unaligned start
    n_lines = tl.where(b_b > b_a, (b_b - b_a + 127) // 128 + 1, 0)
    base = p.to(tl.pointer_type(tl.int8)) + (row_off.to(tl.int64) * (p.dtype.element_ty.primitive_bitwidth // 8))
    for c in range(0, n_lines, 16):
        offs = tl.minimum(b_a + (c + tl.arange(0, 16)) * 128, b_b - 1)
        tl.inline_asm_elementwise(
            _PREFETCH_L2, "=r,l", [base[:, None] + offs[None, :]], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def prefetch_planes_l2(wctx, pf, u_a, u_b, BLOCK_N: tl.constexpr):
    """prefetch_l2 of units [u_a, u_b) of the matvec's rows in each of its four plane views (wctx:
    the pointers and the rows' offsets); pf = (row bytes of each plane, 0 where unused; n_units)."""
    p0, p1, p2, p3, r0, r1, r2, r3, _, _ = wctx
    rb0, rb1, rb2, rb3, n_units = pf
    prefetch_l2(p0, r0, rb0, u_a, u_b, n_units, BLOCK_N)
    prefetch_l2(p1, r1, rb1, u_a, u_b, n_units, BLOCK_N)
    prefetch_l2(p2, r2, rb2, u_a, u_b, n_units, BLOCK_N)
    prefetch_l2(p3, r3, rb3, u_a, u_b, n_units, BLOCK_N)


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
def quantize_tiles(x, m, g, gmask, K, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, INTERLEAVE: tl.constexpr):
    """Quantize the 32-tiles g [BG] of row m, x [BG, 32] float32 (masked tiles: 0), and store them
    in quantize_act's layout (xq int8 [M, K], xd / xs32 [M, K/32], xs16 [M, K/16]). The one copy
    of the formula: `_act_quant_kernel` and norm_quant's `_rmsnorm_quantize_kernel` call it."""
    l = tl.arange(0, 32)
    G = K // 32
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
    PDL: tl.constexpr = False,  # pdl(): wait for the kernel before it, then let the next (a matvec) start
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    m = tl.program_id(0)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BG] 32-groups
    l = tl.arange(0, 32)
    gmask = g < K // 32
    x = tl.load(x_ptr + m * stride_xm + g[:, None] * 32 + l[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)
    quantize_tiles(x, m, g, gmask, K, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, INTERLEAVE)


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
    _act_quant_kernel[grid](
        x, xq, xd, xs32, xs16, K, x.stride(0), INTERLEAVE=interleave, BLOCK_G=BLOCK_G, PDL=pdl(x.device), num_warps=4,
        **pdl_launch(x.device),
    )  # fmt: skip
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


def prefetch_when_batched(block_n: int, block_u: int, num_warps: int) -> Callable[[int, int, int], MatvecConfig]:
    """A default_config policy measured for Q4_K on an H200 (benchmarks/results/kernels_h200_tuning.json):
    one tile at every M, with the register prefetch once x has several rows."""
    return lambda M, N, K: MatvecConfig(block_n=block_n, block_u=block_u, num_warps=num_warps, prefetch=M > 1)


# The tuner's candidates for every format (config.settings.tune; the format's measured default is
# tried first): (block_n, block_u, num_warps, prefetch). A unit is 16-32 bytes of weights per
# thread; these cover 1-4 rows per program and 16-64 units per step.
# fmt: off
MATVEC_SEARCH = tuple(
    MatvecConfig(block_n=n, block_u=u, num_warps=w, prefetch=p)
    for n, u, w, p in (
        (1, 16, 1, False), (1, 32, 1, False), (1, 32, 1, True), (1, 64, 2, True),
        (2, 16, 1, False), (2, 16, 1, True), (2, 16, 2, False), (2, 32, 1, False), (2, 32, 1, True),
        (2, 32, 2, False), (2, 32, 2, True), (2, 32, 4, False), (2, 64, 2, False), (2, 64, 4, False),
        (2, 64, 4, True), (4, 16, 1, False), (4, 16, 2, True), (4, 16, 4, False), (4, 32, 2, False),
        (4, 32, 4, False), (4, 32, 4, True),
    )
)
# fmt: on


@dataclass(frozen=True)
class KernelSpec:
    """One weight format's kernels (each kernels/<fmt>.py builds its SPEC; registry.KERNELS
    collects them by `fmt`). The @triton.jit functions are described where matvec_kernel and
    gemm.py call them; `p` is the tuple of the format's plane pointers (at most 4, unused ones
    repeat the first)."""

    fmt: str  # the quant.FORMATS key, e.g. "q4_k"
    unit: int  # weights per matvec unit: the matvec runs K // unit units per row
    load_units: Any  # LOAD (wctx, u, umask) -> w; wctx as matvec_kernel builds it
    decode: Any  # DECODE (w, u, USE_ASM) -> wd
    row_dot: Any  # ROW_DOT (wd, u, umask, xa, m, K, USE_ASM) -> float32 [BLOCK_N, BLOCK_U]
    # (p, rows, rows64, s, K, GROUP) -> float32 [BLOCK_N, S, 32]: w[rows, 32 s + i] for the 32-blocks s [S]
    dequant_tile: Any
    plane_dtypes: tuple  # per plane, the dtype the kernels view it as (None: as stored)
    # the matvec config for (M, N, K): a MatvecConfig, or a function (M, N, K) -> MatvecConfig
    default_config: MatvecConfig | Callable[[int, int, int], MatvecConfig]
    matvec_max_m: int = 8  # M <= this: act_quant + matvec
    fused_gemm_max_m: int = 64  # M < this (and > matvec_max_m): fused Triton GEMM; else dequant + cuBLAS
    int8_mma_max_m: int = 0  # matvec_max_m < M <= this: kernels/int8_mma.py (0: the format has none there)
    # w4a16_sync_min_m <= M <= w4a16_sync_max_m, x bf16 / fp16: kernels/w4a16_sync.py, ahead of the
    # matvec and w4a16_mma (max 0: none; config.settings.small_m "auto")
    w4a16_sync_min_m: int = 1
    w4a16_sync_max_m: int = 0
    # matvec_max_m < M <= this, x bf16 / fp16: kernels/w4a16_mma.py, before int8_mma (0: none)
    w4a16_mma_max_m: int = 0
    interleave: bool = False  # act_quant layout the matvec reads
    group: int = 0  # int4 group size (0: none)
    matvec_configs: tuple = MATVEC_SEARCH  # what config.settings.tune tries after the default

    def plane_views(self, planes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The planes as the kernels read them (e.g. uint8 bytes viewed as int32 words)."""
        return tuple(p if dt is None else p.view(dt) for p, dt in zip(planes, self.plane_dtypes, strict=True))

    def matvec_config(self, M: int, N: int, K: int) -> MatvecConfig:
        """The format's measured default matvec config for this shape."""
        c = self.default_config
        return c if isinstance(c, MatvecConfig) else c(M, N, K)


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
#                 rs0, rs1, rs2, rs3, LOAD, DECODE, ROW_DOT, UNIT, GROUP, HAS_BIAS,
#                 SPLIT, PREFETCH, BLOCK_M, M_BLOCKS, BLOCK_N, BLOCK_U, USE_ASM, GLU, EVEN)
# rs_i: row stride of plane i (elements of its view), passed from the host so that Triton sees
# their divisibility by 16 and emits 16-byte loads.
# grid (cdiv(N, BLOCK_N) * cdiv(M, BLOCK_M), 1, split), the row blocks of x fastest; a "unit" is the
# format's natural K step.
# ---------------------------------------------------------------------------------------------


def l2_prefetch_args(planes: Sequence[torch.Tensor], N: int, early: bool) -> dict[str, int]:
    """The matvec's L2 prefetch arguments (config.settings.l2_prefetch units, where the matvec
    triggers early, `early` = `pdl_early(device)`: so by default in graphs of 2 GiB of linear weights
    or more): each plane's row bytes, 0 for a plane that is not [N, ...] (nothing asked of it)."""
    units = config.settings.l2_prefetch
    if units <= 0 or not early:
        return {}
    rbs = [p.shape[1] * p.element_size() if p.dim() == 2 and p.shape[0] == N else 0 for p in planes]
    rbs += [0] * (4 - len(rbs))
    return dict(zip(("rb0", "rb1", "rb2", "rb3"), rbs, strict=True)) | {"L2_UNITS": units}


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
    act: str | None = None,
    ya: tuple[QuantizedActivation, bool] | None = None,
) -> torch.Tensor:
    """out [M, N] = spec's matvec over the plane views (config.settings.on_matvec_launch, when
    set, gets the compiled kernel). act (a GLU_ACTS name): rows interleave gate and up, out
    [M, N / 2] = act(gate) * up; needs an even cfg.block_n. ya = (buffers, interleave), with act:
    the output quantized too, into the buffers (quantize_act's of out); needs cfg.block_n a
    multiple of 64 (whole 32-tiles of outputs per program), no split-K and N / 2 % 32 == 0."""
    n_units = K // spec.unit
    dev = xa.xq.device
    glu = glu_code(act)
    if glu and cfg.block_n % 2:
        raise ValueError(f"a GLU matvec needs an even block_n (gate and up rows of one output), got {cfg}")
    if ya is not None and (not glu or cfg.block_n % 64 or cfg.split_k != 1 or (N // 2) % 32):
        raise ValueError(f"a matvec that quantizes its output needs a GLU, block_n % 64 == 0, no split-K, got {cfg}")
    if out is None:
        out = torch.empty((M, N // 2 if glu else N), dtype=out_dtype, device=dev)
    ps = list(planes) + [planes[0]] * (4 - len(planes))
    block_m = matvec_block_m(M)
    ups = triton.cdiv(triton.cdiv(n_units, cfg.split_k), cfg.block_u) * cfg.block_u
    split = triton.cdiv(n_units, ups)
    grid = (triton.cdiv(N, cfg.block_n) * triton.cdiv(M, block_m), 1, split)  # matvec_prologue
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=dev)
        dst = ws
    else:
        dst = out
    use_pdl = pdl(dev)
    early = pdl_early(dev)
    compiled = matvec_kernel[grid](
        xa.xq, xa.xd, xa.xs32, xa.xs16, *ps, bias if bias is not None else dst, dst, M, N, K, ups,
        *(p.stride(0) for p in ps),
        LOAD=spec.load_units, DECODE=spec.decode, ROW_DOT=spec.row_dot,
        UNIT=spec.unit, GROUP=spec.group, HAS_BIAS=bias is not None, SPLIT=split > 1, PREFETCH=cfg.prefetch,
        BLOCK_M=block_m, M_BLOCKS=triton.cdiv(M, block_m), BLOCK_N=cfg.block_n, BLOCK_U=cfg.block_u,
        USE_ASM=not interpreting(), GLU=glu if split == 1 else 0, EVEN=n_units % cfg.block_u == 0, PDL=use_pdl,
        PDL_EARLY=early,
        **({} if ya is None else dict(
            yq_ptr=ya[0].xq.view(torch.int8), yd_ptr=ya[0].xd, ys32_ptr=ya[0].xs32, ys16_ptr=ya[0].xs16, QUANT_OUT=True,
            INTERLEAVE_OUT=ya[1],
        )),
        **l2_prefetch_args(planes, N, early),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(dev),
    )  # fmt: skip
    if config.settings.on_matvec_launch is not None:
        config.settings.on_matvec_launch(compiled)
    if split > 1 and glu:  # the partials' sum first, then the GLU (a separate step)
        y = torch.empty((M, N), dtype=torch.float32, device=dev)
        splitk_reduce(ws, bias, y)
        act_mul(y, act, out)
    elif split > 1:
        splitk_reduce(ws, bias, out)
    return out


# ---------------------------------------------------------------------------------------------
# The matvec. matvec_kernel is
#     pid_m, pid_n, pid_k, rows, rows_c, u_lo, u_hi = matvec_prologue(N, K, UNITS_PER_SPLIT, ...)
#     wctx = (p0, p1, p2, p3, row offsets r0..r3 of the planes, rows_c, GROUP)
#     accs = matvec_units(LOAD, DECODE, ROW_DOT, wctx, xa, pid_m, M, K, u_lo, u_hi, PREFETCH, ...)
#     matvec_epilogue(accs, bias_ptr, out_ptr, pid_m, pid_k, rows, M, N, ...)
# with the format's three @triton.jit functions (constexpr arguments: KernelSpec.load_units,
# decode, row_dot; UNIT is KernelSpec.unit)
#     LOAD(wctx, u, umask) -> w                  the weights of units u [BLOCK_U] as loaded (a tuple)
#     DECODE(w, u, USE_ASM) -> wd                what every row of x multiplies (nibbles split,
#                                                scales combined): done once per step
#     ROW_DOT(wd, u, umask, xa, m, K, USE_ASM) -> part
#                                                float32 [BLOCK_N, BLOCK_U], the units' dot with row
#                                                m of x; xa = (xq_ptr, xd_ptr, xs32_ptr, xs16_ptr)
# accs: 8 float32 [BLOCK_N, BLOCK_U] accumulators, one per row of x (BLOCK_M <= 8 of them live),
# summed over units only in the epilogue: no cross-thread reduction inside the K loop.
# The format functions read their planes and x with unit_words / unit_scalars / x_words /
# x_scales below.
# ---------------------------------------------------------------------------------------------


@triton.jit
def unit_words(ptr, row_off, first, E: tl.constexpr, umask, OFF: tl.constexpr = 0):
    """int32 [BLOCK_N, BLOCK_U, E]: words first[u] + OFF .. + E - 1 of each row of a plane
    (row_off [BLOCK_N], first [BLOCK_U] in words): one vector load per thread and unit. Streamed:
    the weights pass once, so their lines go first when the caches evict and the activation, read
    by every program, stays (kernel alone, M = 1, H200, 2026-12-02: Q4_0 gate_up 85 -> 91% of copy
    bandwidth, Q4_K 82 -> 88% on gate_up and 61 -> 69% on down; IQ4_XS and Q6_K gained once their
    K loops lost the masks and the scale-layout conversions: docs/kernels.md)."""
    e = tl.arange(0, E)
    at = ptr + row_off[:, None, None] + first[None, :, None] + e[None, None, :] + OFF
    return tl.load(at, mask=umask[None, :, None], other=0, eviction_policy="evict_first")


@triton.jit
def unit_halves(ptr, row_off, u, umask):
    """The 32 bytes of each 32-byte unit u of a plane as two int32 [BLOCK_N, BLOCK_U, 4] halves (words
    0-3 and 4-7): two 16-byte loads of one layout, so one thread holds the whole unit (unit_words)."""
    return unit_words(ptr, row_off, u * 8, 4, umask, 0), unit_words(ptr, row_off, u * 8, 4, umask, 4)


@triton.jit
def unit_scalars(ptr, row_off, idx, umask, OFF: tl.constexpr = 0):
    """[BLOCK_N, BLOCK_U]: element idx[u] + OFF of each row of a plane (row_off [BLOCK_N]). (A
    constant offset goes in OFF: added to the pointer last, it folds into the load's immediate.)
    The pointers are declared non-contiguous: a contiguous idx (IQ4_XS's u, Q6_K's u + 4 * (u // 4))
    made Triton's coalescing give the load its own layout and convert it to the weights' in the
    K loop (a warp shuffle, or shared memory and barriers across warps)."""
    off = tl.max_contiguous(row_off[:, None] + idx[None, :], [1, 1])
    return tl.load(ptr + off + OFF, mask=umask[None, :], other=0)


@triton.jit
def x_words(xq_ptr, m, K, first, umask, like, OFF: tl.constexpr = 0):
    """Row m of the quantized activation (int32 words of 4 int8): words first[u] + OFF .. + E - 1,
    loaded in the shape of the weight words `like` [BLOCK_N, BLOCK_U, E] through broadcast
    pointers: the same layout as the weights, so no shuffle. (A constant offset goes in OFF: added
    to the pointer last, it folds into the load's immediate.)"""
    e = tl.arange(0, like.shape[2])
    xp = xq_ptr + tl.multiple_of(m * (K // 4), 8) + first[:, None] + OFF + e[None, :]
    return tl.load(
        tl.broadcast_to(xp[None, :, :], like.shape), mask=tl.broadcast_to(umask[None, :, None], like.shape), other=0
    )


@triton.jit
def x_group(xq_ptr, m, K, first, umask, like, OFF: tl.constexpr = 0):
    """One 32-group of row m of x, words first[u] + OFF .. + 7, as two [BLOCK_N, BLOCK_U, 4] halves
    in the layout of the weight words `like`. A row dot loads all its x groups before its first
    dp4a: interleaving loads and dp4a costs registers (Q4_K at BLOCK_M = 4: 102 against 88)."""
    return x_words(xq_ptr, m, K, first, umask, like, OFF), x_words(xq_ptr, m, K, first, umask, like, OFF + 4)


@triton.jit
def group_dot(a, b, xg, SIGNED: tl.constexpr, USE_ASM: tl.constexpr):
    """int32 [BLOCK_N, BLOCK_U]: the integer dot of 32 weights with one x group xg (x_group): a
    [BLOCK_N, BLOCK_U, 4] meets words 0-3, b words 4-7 (4 packed weight bytes per int32 word,
    unsigned or SIGNED)."""
    xa, xb = xg
    return tl.sum(_dp4a(a, xa, SIGNED, USE_ASM) + _dp4a(b, xb, SIGNED, USE_ASM), axis=2)


@triton.jit
def dot_pair(a, b, c, d, xq_ptr, m, K, first, umask, SIGNED: tl.constexpr, USE_ASM: tl.constexpr):
    """The integer dots of two consecutive 32-groups of row m of x (words first[u] .. + 15) with
    their weights: (a, b) meet the first group's halves, (c, d) the second's. Both x groups are
    loaded before the first dp4a (x_group)."""
    x0 = x_group(xq_ptr, m, K, first, umask, a)
    x1 = x_group(xq_ptr, m, K, first, umask, a, 8)
    return group_dot(a, b, x0, SIGNED, USE_ASM), group_dot(c, d, x1, SIGNED, USE_ASM)


@triton.jit
def _block32_sums(lo, hi, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    # (sum(q * xq) int32 [BLOCK_N, BLOCK_U], xd [BLOCK_U], xs32 [BLOCK_U]) of the 32-blocks u with row m of x
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    s = group_dot(lo, hi, x_group(xq_ptr, m, K, u * 8, umask, lo), False, USE_ASM)
    return s, x_scales(xd_ptr, m, K // 32, u, umask), x_scales(xs32_ptr, m, K // 32, u, umask)


@triton.jit
def block32_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    """ROW_DOT of the formats whose unit is one block of 32 weights w = d * (q - z), q unsigned
    bytes: wd = (lo, hi, d, z), lo meeting words 0-3 of the block's x group, hi words 4-7, d float32
    [BLOCK_N, BLOCK_U], z a float32 tensor of d's shape or a constant. With xs32 = xd * sum(xq):
        part = d * (xd * sum(q * xq) - z * xs32)
    Q4_0 (z = 8), Q5_0 (z = 16), int4_g* (d = scale, z = zero)."""
    lo, hi, d, z = wd
    s, xd, xs = _block32_sums(lo, hi, u, umask, xa, m, K, USE_ASM)
    return d * (xd[None, :] * s.to(tl.float32) - z * xs[None, :])


@triton.jit
def block32_min_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    """ROW_DOT of the 32-blocks w = d * q + mn (Q4_1, Q5_1): wd = (lo, hi, d, mn) as block32_row_dot's,
    mn float32 [BLOCK_N, BLOCK_U]:
        part = d * (xd * sum(q * xq)) + mn * xs32"""
    lo, hi, d, mn = wd
    s, xd, xs = _block32_sums(lo, hi, u, umask, xa, m, K, USE_ASM)
    return d * (xd[None, :] * s.to(tl.float32)) + mn * xs[None, :]


@triton.jit
def x_scales(ptr, m, n_groups, g, umask, OFF: tl.constexpr = 0):
    """float32 [BLOCK_U]: groups g [BLOCK_U] + OFF of row m of a per-group activation plane
    (xd, xs32: n_groups = K // 32; xs16: K // 16)."""
    return tl.load(ptr + (m * n_groups + g) + OFF, mask=umask, other=0.0)


@triton.jit
def matvec_prologue(N, K, UNITS_PER_SPLIT, UNIT: tl.constexpr, M_BLOCKS: tl.constexpr, BLOCK_N: tl.constexpr):
    """-> pid_m, pid_n, pid_k, rows [BLOCK_N] (this program's output rows), rows_c (clamped to
    N - 1: loads need no row mask), [u_lo, u_hi) (this program's units along K). Axis 0 of the
    grid runs the row blocks of x fastest: the programs that read one weight tile (one per
    BLOCK_M rows of x) run together, and the second reads it from L2, not HBM. M_BLOCKS =
    cdiv(M, BLOCK_M) is a constexpr (1 or 2: M <= 16), so one row block costs no division."""
    if M_BLOCKS == 1:
        pid_m = 0
        pid_n = tl.program_id(0)
    else:
        pid_m = tl.program_id(0) % M_BLOCKS
        pid_n = tl.program_id(0) // M_BLOCKS
    pid_k = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_c = tl.minimum(rows, N - 1)
    n_units = K // UNIT
    u_lo = pid_k * UNITS_PER_SPLIT
    u_hi = tl.minimum(u_lo + UNITS_PER_SPLIT, n_units)
    return pid_m, pid_n, pid_k, rows, rows_c, u_lo, u_hi


@triton.jit
def matvec_step(
    DECODE: tl.constexpr,
    ROW_DOT: tl.constexpr,
    w,
    u,
    umask,
    xa,
    pid_m,
    M,
    K,
    accs,
    BLOCK_M: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    """accs plus the units u's contribution for each row of x: decoded once, dotted per row."""
    wd = DECODE(w, u, USE_ASM)
    for mi in tl.static_range(BLOCK_M):
        m = tl.minimum(pid_m * BLOCK_M + mi, M - 1)
        accs = add_to_row(accs, ROW_DOT(wd, u, umask, xa, m, K, USE_ASM), mi)
    return accs


@triton.jit
def wait_after_first_step(
    wctx, pf, u_lo, u_hi, BLOCK_U: tl.constexpr, BLOCK_N: tl.constexpr, PDL_EARLY: tl.constexpr, L2_UNITS: tl.constexpr
):
    """A PDL matvec's wait, once its first step's weights are loaded: L2 asked for the next L2_UNITS
    units of every plane (`prefetch_planes_l2`), griddepcontrol.wait for the kernel before (which
    makes x), then, with PDL_EARLY, the kernel after let launch."""
    if L2_UNITS > 0:
        prefetch_planes_l2(wctx, pf, u_lo + BLOCK_U, tl.minimum(u_hi, u_lo + BLOCK_U + L2_UNITS), BLOCK_N)
    gdc_wait()
    if PDL_EARLY:
        gdc_launch_dependents()


@triton.jit
def matvec_units(
    LOAD: tl.constexpr,
    DECODE: tl.constexpr,
    ROW_DOT: tl.constexpr,
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
    EVEN: tl.constexpr,
    PDL: tl.constexpr = False,
    PDL_EARLY: tl.constexpr = False,
    pf=None,
    L2_UNITS: tl.constexpr = 0,
):
    """The K loop over units [u_lo, u_hi), BLOCK_U at a time -> accs. With PREFETCH the weight
    loads are double-buffered in registers: the next units' loads fly while these compute. EVEN
    (the launcher's K // UNIT % BLOCK_U == 0, so every step is whole, in every split): the steps
    without PREFETCH load unmasked (a constant-true mask, which Triton folds away): no predicate
    and no zero-fill per load (IQ4_XS's loop at M = 1, sm_90: 169 -> 148 instructions per step,
    benchmarks/sass_matvec.py). PDL (a programmatic dependent launch, `pdl()`): the first step's
    weights are loaded, then griddepcontrol.wait waits for the kernel before this one (which makes
    x), then x is read: the weights are constants, x is not. L2_UNITS (with PDL): before that wait,
    the next L2_UNITS units of every plane are asked of L2 too (`prefetch_planes_l2`, pf = (the
    planes' row bytes, n_units)), so HBM works while the kernel before runs."""
    ub = tl.arange(0, BLOCK_U)
    zero = tl.zeros([BLOCK_N, BLOCK_U], dtype=tl.float32)
    accs = (zero, zero, zero, zero, zero, zero, zero, zero)
    if PREFETCH:
        u = u_lo + ub
        umask = u < u_hi
        w = LOAD(wctx, u, umask)
        if PDL:
            wait_after_first_step(wctx, pf, u_lo, u_hi, BLOCK_U, BLOCK_N, PDL_EARLY, L2_UNITS)
        for u0 in range(loop_bound(u_lo), loop_bound(u_hi), BLOCK_U):
            un = u0 + BLOCK_U + ub
            unmask = un < u_hi
            w_n = LOAD(wctx, un, unmask)
            accs = matvec_step(DECODE, ROW_DOT, w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM)
            w, u, umask = w_n, un, unmask
    else:
        u_first = u_lo
        if PDL:  # the first step peeled: its weights load before the wait
            u = u_lo + ub
            umask = u < u_hi
            w = LOAD(wctx, u, umask)
            wait_after_first_step(wctx, pf, u_lo, u_hi, BLOCK_U, BLOCK_N, PDL_EARLY, L2_UNITS)
            accs = matvec_step(DECODE, ROW_DOT, w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM)
            u_first = u_lo + BLOCK_U
        for u0 in range(loop_bound(u_first), loop_bound(u_hi), BLOCK_U):
            u = u0 + ub
            if EVEN:
                umask = tl.full([BLOCK_U], 1, tl.int1)
            else:
                umask = u < u_hi
            w = LOAD(wctx, u, umask)
            accs = matvec_step(DECODE, ROW_DOT, w, u, umask, xa, pid_m, M, K, accs, BLOCK_M, USE_ASM)
    return accs


@triton.jit
def add_to_row(accs, part, MI: tl.constexpr):
    """accs with `part` added to accumulator MI (the row of x; chosen at compile time)."""
    return accs[:MI] + (accs[MI] + part,) + accs[MI + 1 :]


@triton.jit
def tanh(x):
    """tanh(x) = 1 - 2 / (exp(2x) + 1): exp overflowing to inf gives 1, underflowing to 0 gives -1."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


def glu_code(act: str | None) -> int:
    """The matvec's GLU constexpr for a GLU_ACTS name (None: no GLU, 0); `glu` below reads it."""
    return 1 + GLU_ACTS.index(act) if act else 0


_GLU_SILU: tl.constexpr = tl.constexpr(glu_code("silu"))


@triton.jit
def glu(gate, up, GLU: tl.constexpr):
    """act(gate) * up, float32: GLU = glu_code(act), SiLU or GELU (tanh approximation)."""
    if GLU == _GLU_SILU:
        a = gate * tl.sigmoid(gate)
    else:
        a = 0.5 * gate * (1.0 + tanh(0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)))
    return a * up


@triton.jit
def _act_mul_kernel(y_ptr, out_ptr, total, GLU: tl.constexpr, BLOCK: tl.constexpr):
    # out.flat[i] = act(y.flat[2i]) * y.flat[2i + 1]: y [M, 2I] interleaved, out [M, I], contiguous
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < total
    pair = tl.load(y_ptr + 2 * i[:, None] + tl.arange(0, 2)[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    gate, up = tl.split(pair)
    tl.store(out_ptr + i, glu(gate, up, GLU).to(out_ptr.dtype.element_ty), mask=ok)


def act_mul(y: torch.Tensor, act: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """act(gate) * up of an interleaved gate|up output y [M, 2I] (rows 2i, 2i + 1: glu_act's
    layout) as one launch: out [M, I] (y's dtype unless given), float32 math. The GLU step of every
    path that does not fuse it into its matmul: glu_linear above the fused kernel's rows, the
    quantized GEMMs and the split-K matvec."""
    y = y.contiguous()
    M, N = y.shape
    if out is None:
        out = torch.empty((M, N // 2), dtype=y.dtype, device=y.device)
    total = M * (N // 2)
    if total:
        block = 1024
        _act_mul_kernel[(triton.cdiv(total, block),)](y, out, total, GLU=glu_code(act), BLOCK=block, num_warps=4)
    return out


@triton.jit
def matvec_epilogue(
    accs,
    bias_ptr,
    out_ptr,
    pid_m,
    pid_n,
    pid_k,
    rows,
    M,
    N,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    GLU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ya=None,
    QUANT_OUT: tl.constexpr = False,
    INTERLEAVE_OUT: tl.constexpr = False,
):
    """Sums each accumulator over its units (accs[i]: row m = pid_m * BLOCK_M + i) and stores the
    [BLOCK_M, BLOCK_N] tile: float32 partials at split pid_k when SPLIT, else (+ bias) cast to out.
    GLU (glu_code(act): 0 none, else SiLU or GELU-tanh; not with SPLIT): the weight's rows
    interleave gate and up (row 2i, 2i + 1), out is [M, N / 2] and gets act(gate) * up.
    QUANT_OUT (with GLU; BLOCK_N // 2 a multiple of 32: the tile's outputs are whole 32-tiles):
    the stored outputs are also quantized, quantize_act's formula (`quantize_tiles`), into
    ya = (yq, yd, ys32, ys16) of y [M, N / 2]: the down projection's int8 activation."""
    mrow = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for i in tl.static_range(BLOCK_M):
        acc = tl.where(mrow[:, None] == i, tl.sum(accs[i], axis=1)[None, :], acc)
    mrow = pid_m * BLOCK_M + mrow
    mask = (mrow[:, None] < M) & (rows[None, :] < N)
    if SPLIT:
        tl.store(out_ptr + pid_k * M * N + mrow[:, None] * N + rows[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            b = tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
            acc = acc + b[None, :]
        if GLU:
            gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N // 2, 2]))
            cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)  # the tile's gate|up pairs
            y = glu(gate, up, GLU)
            omask = (mrow[:, None] < M) & (cols[None, :] < N // 2)
            y = y.to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + mrow[:, None] * (N // 2) + cols[None, :], y, mask=omask)
            if QUANT_OUT:
                yq_ptr, yd_ptr, ys32_ptr, ys16_ptr = ya
                g = pid_n * (BLOCK_N // 64) + tl.arange(0, BLOCK_N // 64)  # the tile's 32-tiles of y
                for i in tl.static_range(BLOCK_M):
                    m = pid_m * BLOCK_M + i
                    yi = tl.sum(tl.where(mrow[:, None] == m, y.to(tl.float32), 0.0), axis=0)  # row m of y
                    gmask = g < tl.where(m < M, N // 64, 0)  # (no row m: every tile masked)
                    t = tl.reshape(yi, [BLOCK_N // 64, 32])
                    quantize_tiles(t, m, g, gmask, N // 2, yq_ptr, yd_ptr, ys32_ptr, ys16_ptr, INTERLEAVE_OUT)
        else:
            tl.store(out_ptr + mrow[:, None] * N + rows[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def matvec_kernel(
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr,  # xq int32 [M, K/4]; xd, xs32 f32 [M, K/32]; xs16 f32 [M, K/16]
    p0, p1, p2, p3,  # the format's plane views (KernelSpec.plane_views; unused ones repeat p0)
    bias_ptr, out_ptr,  # bias [N]; out [M, N] (or f32 [split, M, N] when SPLIT)
    M, N, K, UNITS_PER_SPLIT,
    rs0, rs1, rs2, rs3,  # rs_i: row strides of the planes
    LOAD: tl.constexpr, DECODE: tl.constexpr, ROW_DOT: tl.constexpr,
    UNIT: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, M_BLOCKS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
    USE_ASM: tl.constexpr, GLU: tl.constexpr = 0,  # GLU: act(gate) * up of interleaved rows (matvec_epilogue)
    EVEN: tl.constexpr = False,  # every K step whole: no masks (matvec_units)
    PDL: tl.constexpr = False,  # launched with launch_pdl: wait for the kernel before it (matvec_units)
    PDL_EARLY: tl.constexpr = False,  # pdl_early(): then let the kernel after it start (matvec_units)
    yq_ptr=None, yd_ptr=None, ys32_ptr=None, ys16_ptr=None,  # QUANT_OUT: quantize_act of the GLU's output
    QUANT_OUT: tl.constexpr = False, INTERLEAVE_OUT: tl.constexpr = False,
    rb0=0, rb1=0, rb2=0, rb3=0,  # L2_UNITS: the planes' row bytes (0: unused) (matvec_units, prefetch_l2)
    L2_UNITS: tl.constexpr = 0,  # l2_prefetch_args(): K units of weights asked of L2 before the PDL wait
):  # fmt: skip
    pid_m, pid_n, pid_k, rows, rows_c, u_lo, u_hi = matvec_prologue(N, K, UNITS_PER_SPLIT, UNIT, M_BLOCKS, BLOCK_N)
    # the loop invariants LOAD reads: plane pointers, the rows' offsets in each plane (int64 in
    # the bulk plane 0: a large weight's byte offsets pass 2**31), the rows, the int4 group
    wctx = (p0, p1, p2, p3, rows_c.to(tl.int64) * rs0, rows_c * rs1, rows_c * rs2, rows_c * rs3, rows_c, GROUP)
    xa = (xq_ptr, xd_ptr, xs32_ptr, xs16_ptr)
    accs = matvec_units(
        LOAD, DECODE, ROW_DOT, wctx, xa, pid_m, M, K, u_lo, u_hi, PREFETCH, BLOCK_M, BLOCK_N, BLOCK_U, USE_ASM, EVEN,
        PDL, PDL_EARLY, (rb0, rb1, rb2, rb3, K // UNIT), L2_UNITS,
    )  # fmt: skip
    matvec_epilogue(
        accs, bias_ptr, out_ptr, pid_m, pid_n, pid_k, rows, M, N, HAS_BIAS, SPLIT, GLU, BLOCK_M, BLOCK_N,
        (yq_ptr, yd_ptr, ys32_ptr, ys16_ptr), QUANT_OUT, INTERLEAVE_OUT,
    )  # fmt: skip
