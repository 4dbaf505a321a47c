"""CUDA dispatch of qlinear: W4A8 matvec for small M, dequantize + cuBLAS for large M.

Per format, from its KernelSpec (kernels/registry.py); `kernel_for` names the kernel a call gets:

    spec.w4a16_sync_min_m <= M <= spec.w4a16_sync_max_m, bf16 / fp16 x, a shape it takes:
                                 w4a16_sync, W4A16 on mma.sync reading the planes as they are, x through
                                 a shared-memory ring (Q4_K and Q6_K: M = 3..16; +1 launch for
                                 split-K, +1 for a GLU's act * mul)
    M <= spec.matvec_max_m:      act_quant(x) -> the format's matvec     (2 launches, +1 when split-K;
                                 1 when the activation comes quantized: qlinear_q8 / glu_qlinear_q8,
                                 whose xa the act_quant rule computed once for every consumer)
    M <= spec.w4a16_mma_max_m:   w4a16_mma, W4A16 on the bf16 / fp16 tensor cores, nibbles decoded on
                                 packed bytes (bf16 / fp16 x; Q4_K and Q6_K: M = 17..64; with small_m
                                 "off" 5..64 and 7..64; +1 launch for split-K, +1 for a GLU's act * mul)
    M <= spec.int8_mma_max_m:    act_quant(x) -> int8_mma, W4A8 on the int8 tensor cores (float32 x:
                                 Q4_K 5..32, Q6_K 7..32; +1 launch for split-K, +1 for a GLU's act * mul)
    M <  spec.fused_gemm_max_m:  qgemm, the fused Triton GEMM (dequant in registers + tl.dot)
    otherwise:                   dequant_mm (chunked dequant -> cuBLAS); config.settings.gemm
                                 == "fused" (INDUCTOR_FUSE_GEMM=fused) forces qgemm

matvec_max_m is the measured crossover on an H200 (benchmarks/bench_kernels.py --crossover; Q4_K's
against w4a16_mma: --small-m); w4a16_sync's range by benchmarks/bench_w4a16_sync.py (its op / op_off
columns: the dispatch with and without it), on an H100 for its lower end (docs/kernels.md).
config.settings.small_m (INDUCTOR_FUSE_SMALL_M): "auto" as above; "sync" sends every call of 1-16
bf16 / fp16 rows of a w4a16_sync format (Q4_K, Q6_K) there first (at M = 1 slower than the matvec;
a qlinear_q8's quantized activation then goes unread); "off" never (the matvec and w4a16_mma again).
config.settings.exact_matvec (INDUCTOR_FUSE_EXACT_MATVEC=1) sends every M to the GEMM (activations
stay float: no int8 rounding of x, slower at small M). A format without kernels raises
NotImplementedError (ops.py then runs the reference).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from .. import config as knobs  # (the `config` arguments here are kernel configs)
from ..quant.op import empty_quantized_activation
from ._common import MatvecConfig, QuantizedActivation, act_mul, act_quant, interpreting, launch_matvec, pick_config
from .gemm import dequant_mm, qgemm
from .int8_mma import int8_mma
from .registry import kernel_spec
from .w4a16_mma import w4a16_mma

log = logging.getLogger("inductor_fuse")

GLU_QUANT_WARPS = 16  # warps of a GLU matvec program that quantizes its output (64 weight rows)
SYNC_MAX_M = 16  # w4a16_sync takes 1..16 rows of x


def wants_w4a16_sync(spec, M: int, dtype: torch.dtype, settings: knobs.Settings) -> bool:
    """Whether a call of M rows of `dtype` x goes to w4a16_sync (before asking whether the kernel
    takes the shape): bf16 / fp16 x, not under exact_matvec, and by settings.small_m: "auto" in the
    spec's range (w4a16_sync_min_m <= M <= w4a16_sync_max_m), "sync" every M <= 16, "off" never."""
    if dtype not in (torch.bfloat16, torch.float16) or settings.exact_matvec or settings.small_m == "off":
        return False
    if settings.small_m == "sync":
        return 1 <= M <= SYNC_MAX_M
    return spec.w4a16_sync_min_m <= M <= spec.w4a16_sync_max_m


@functools.cache
def _w4a16_sync_module():
    """kernels/w4a16_sync.py, imported on first use (it is written in Gluon); None, with one
    WARNING, where this Triton cannot import it (the caller then takes the next path)."""
    try:
        from . import w4a16_sync
    except ImportError as e:  # a Triton without Gluon or with another async-copy API
        log.warning("inductor_fuse: w4a16_sync unavailable with this Triton (%s); w4a16_mma runs instead", e)
        return None
    return w4a16_sync


def matvec(
    x: torch.Tensor,
    planes,
    bias,
    fmt: str,
    config: MatvecConfig | None = None,
    act: str | None = None,
    xa: QuantizedActivation | None = None,
    ya: tuple[QuantizedActivation, bool] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] -> [M, N] (into `out` when given, with ya) through act_quant + the format's W4A8
    matvec; with `xa` (x already quantized in the format's layout, spec.interleave) the matvec
    alone. Without `config`: the format's measured default (KernelSpec.matvec_config); runtime tuning is opt-in
    (config.settings.tune): triton's do_bench times one launch at a time and, for kernels of a few
    microseconds, ranked the configs differently from a CUDA-graph measurement (qkv: picked 9.5 us
    over 6.2 us). act (a GLU_ACTS name): glu_qlinear's matvec, act(gate) * up in its epilogue;
    with ya = (buffers, interleave) too, the epilogue also quantizes it into the buffers, with
    programs of 64 rows (32 outputs: one whole 32-tile of y each) and the format's K step."""
    spec = kernel_spec(fmt)
    M, K = x.shape
    N = planes[0].shape[0]
    views = spec.plane_views(planes)
    if xa is None:
        xa = act_quant(x, interleave=spec.interleave)

    def launch(cfg: MatvecConfig, out: torch.Tensor | None = None) -> torch.Tensor:
        return launch_matvec(spec, xa, views, bias, M, N, K, cfg, x.dtype, out=out, act=act, ya=ya)

    if ya is not None:
        base = config or spec.matvec_config(M, N, K)
        cfg = MatvecConfig(block_n=64, block_u=base.block_u, num_warps=GLU_QUANT_WARPS, prefetch=base.prefetch)
        return launch(cfg, out)

    if config is None and interpreting():  # fewer, larger programs: the interpreter is slow per program
        config = MatvecConfig(block_n=16, block_u=8, prefetch=True)
    if config is None:
        out = torch.empty((M, N // 2 if act else N), dtype=x.dtype, device=x.device)
        cands = [spec.matvec_config(M, N, K), *spec.matvec_configs]
        if act:  # a program holds gate and up rows of its outputs: an even block_n
            cands = [c if c.block_n % 2 == 0 else dataclasses.replace(c, block_n=2 * c.block_n) for c in cands]
        config = pick_config(("matvec", fmt, M, N, K, act), cands, lambda c: launch(c, out), tune=False)
        return launch(config, out)
    return launch(config)


def kernel_for(fmt: str, M: int, N: int, K: int, dtype: torch.dtype, settings: knobs.Settings | None = None) -> str:
    """The kernel qlinear_cuda runs for M rows of `dtype` x against fmt's N x K weight, by the table
    at the top of this file: "w4a16_sync", "matvec", "w4a16_mma", "int8_mma", "qgemm" or
    "dequant_mm". Only "matvec" and "int8_mma" read a quantized activation (the act_quant rule asks)."""
    spec = kernel_spec(fmt)
    settings = settings or knobs.settings
    if wants_w4a16_sync(spec, M, dtype, settings):  # and this Triton imports it, and it takes the shape
        sync = _w4a16_sync_module()
        if sync is not None and fmt in sync.FMTS and sync.supports(M, N, K, fmt):
            return "w4a16_sync"
    if settings.exact_matvec:
        return "qgemm"
    if M <= spec.matvec_max_m:
        return "matvec"
    if M <= spec.w4a16_mma_max_m and dtype in (torch.bfloat16, torch.float16):
        return "w4a16_mma"
    if M <= spec.int8_mma_max_m:
        return "int8_mma"
    return "qgemm" if M < spec.fused_gemm_max_m or settings.gemm == "fused" else "dequant_mm"


def qlinear_cuda(x: torch.Tensor, planes, bias, fmt: str, act: str | None = None, xa=None, ya_interleave=None):
    """The CUDA body of torch.ops.inductor_fuse.qlinear, and with `act` of glu_qlinear (arguments
    already validated): the matvec applies the GLU in its epilogue; the other kernels write
    gate|up, then act(gate) * up runs as its own step. `xa`: quantize_act(x, spec.interleave, ...)'s
    four tensors (qlinear_q8, glu_qlinear_q8), which the matvec and int8_mma read instead of
    quantizing x themselves; the others read x (quantize_act computes nothing for the GEMMs: its
    max_m). ya_interleave (a bool, with act; glu_qlinear_q8_quantize_act): the GLU matvec also
    quantizes its output, and the call returns (y, yq, yd, ys32, ys16); a ValueError where the
    matvec does not run."""
    spec = kernel_spec(fmt)
    K = x.shape[-1]
    N = planes[0].shape[0]
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    n_out = N // 2 if act else N
    if M == 0:
        return x.new_empty((*x.shape[:-1], n_out))
    planes = [p if p.is_contiguous() else p.contiguous() for p in planes]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    settings = knobs.settings
    qa = None if xa is None else QuantizedActivation(*(t.reshape(M, -1).contiguous() for t in xa))
    if ya_interleave is not None:  # the GLU matvec that quantizes its output, whatever kernel_for says
        if M > spec.matvec_max_m or settings.exact_matvec:
            raise ValueError(
                f"{fmt}: the GLU matvec that quantizes its output runs for M <= {spec.matvec_max_m}, got {M}"
            )
        y = x.new_empty((*x.shape[:-1], n_out))
        ya = empty_quantized_activation(y)
        flat = QuantizedActivation(*(t.view(M, -1) for t in ya))
        matvec(x2, planes, bias, fmt, act=act, xa=qa, ya=(flat, ya_interleave), out=y.view(M, n_out))
        return (y, *ya)
    kernel = kernel_for(fmt, M, N, K, x2.dtype, settings)
    if kernel == "matvec":
        return matvec(x2, planes, bias, fmt, act=act, xa=qa).reshape(*x.shape[:-1], n_out)
    if kernel == "w4a16_sync":
        out = _w4a16_sync_module().w4a16_sync(x2, planes, bias, fmt)
    elif kernel == "w4a16_mma":
        out = w4a16_mma(x2, planes, bias, fmt)
    elif kernel == "int8_mma":  # xa when quantize_act filled it
        out = int8_mma(x2, planes, bias, fmt, xa=qa)
    elif kernel == "qgemm":
        out = qgemm(x2, planes, bias, fmt)
    else:
        out = dequant_mm(x2, planes, bias, fmt)
    if act:
        out = act_mul(out, act)
    return out.reshape(*x.shape[:-1], n_out)
