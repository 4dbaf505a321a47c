"""CUDA dispatch of qlinear: W4A8 matvec for small M, dequantize + cuBLAS for large M.

    M <= MATVEC_MAX_M[fmt]: act_quant(x) -> <fmt>_matvec     (2 launches, +1 when split-K)
    M < FUSED_GEMM_MAX_M:   qgemm, the fused Triton GEMM (dequant in registers + tl.dot)
    otherwise:              dequant_mm (chunked dequant -> cuBLAS); INDUCTOR_FUSE_GEMM=fused
                            forces qgemm

MATVEC_MAX_M is the measured crossover on an H200 (benchmarks/bench_kernels.py --crossover).
INDUCTOR_FUSE_EXACT_MATVEC=1 sends every M to the GEMM (activations stay float: no int8
rounding of x, slower at small M).
"""

from __future__ import annotations

import os

import torch

from . import int4, q4_k, q5_0, q6_k, q8_0
from ._common import MatvecConfig, act_quant, interpreting, launch_matvec, pick_config
from .gemm import dequant_mm, qgemm

MATVEC_MAX_M = {"q4_k": 8, "q6_k": 16, "q5_0": 8, "q8_0": 8, "int4_g32": 8, "int4_g64": 8, "int4_g128": 8}
# Above MATVEC_MAX_M: the fused Triton GEMM up to FUSED_GEMM_MAX_M (its dequant is cheap next to
# cuBLAS' fixed cost there; not for q6_k, whose tile needs three gathers per weight), then
# dequantize + cuBLAS.
FUSED_GEMM_MAX_M = {"q4_k": 64, "q6_k": 0, "q5_0": 64, "q8_0": 64, "int4_g32": 64, "int4_g64": 64, "int4_g128": 64}

# fmt -> (module, matvec kernel, elements per unit, interleaved activation, group)
_MATVEC = {
    "q4_k": (q4_k, q4_k._q4k_matvec_kernel, 64, False, 0),
    "q6_k": (q6_k, q6_k._q6k_matvec_kernel, 32, False, 0),
    "q5_0": (q5_0, q5_0._q5_0_matvec_kernel, 32, False, 0),
    "q8_0": (q8_0, q8_0._q8_0_matvec_kernel, 32, False, 0),
    "int4_g32": (int4, int4._int4_matvec_kernel, 32, True, 32),
    "int4_g64": (int4, int4._int4_matvec_kernel, 32, True, 64),
    "int4_g128": (int4, int4._int4_matvec_kernel, 32, True, 128),
}


# Measured defaults (H200, CUDA graph over rotated weight copies: benchmarks/results/
# kernels_h200_tuning.json). Runtime tuning of the matvec is opt-in (INDUCTOR_FUSE_TUNE=1):
# triton's do_bench times one launch at a time and, for kernels of a few microseconds, ranked the
# configs differently from the graph measurement (qkv: picked 9.5 us over 6.2 us).
def default_matvec_config(fmt: str, M: int, N: int, K: int) -> MatvecConfig:
    if fmt == "q4_k":
        return MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=M > 1)
    if fmt == "q6_k":
        if M > 1:
            return MatvecConfig(block_n=2, block_u=16, num_warps=1, prefetch=True)
        if K >= 8192:
            return MatvecConfig(block_n=1, block_u=32, num_warps=1, prefetch=True)
        return MatvecConfig(block_n=2, block_u=32, num_warps=2)
    mod = _MATVEC[fmt][0]
    return mod.MATVEC_CONFIGS[0]


def matvec(x: torch.Tensor, planes, bias, fmt: str, config: MatvecConfig | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] through act_quant + the format's W4A8 matvec (tuned config unless given)."""
    mod, kernel, unit, interleave, group = _MATVEC[fmt]
    M, K = x.shape
    N = planes[0].shape[0]
    views = mod.plane_views(planes)
    xa = act_quant(x, interleave=interleave)
    if config is None and interpreting():  # fewer, larger programs: the interpreter is slow per program
        config = MatvecConfig(block_n=16, block_u=8, prefetch=True)
    if config is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
        key = ("matvec", fmt, M, N, K)
        cands = [default_matvec_config(fmt, M, N, K)] + [c for c in mod.MATVEC_CONFIGS]
        config = pick_config(
            key,
            cands,
            lambda c: launch_matvec(kernel, xa, views, bias, M, N, K, K // unit, c, x.dtype, group=group, out=out),
            tune=False,
        )
        return launch_matvec(kernel, xa, views, bias, M, N, K, K // unit, config, x.dtype, group=group, out=out)
    return launch_matvec(kernel, xa, views, bias, M, N, K, K // unit, config, x.dtype, group=group)


def qlinear_cuda(x: torch.Tensor, planes, bias, fmt: str) -> torch.Tensor:
    K = x.shape[-1]
    N = planes[0].shape[0]
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*x.shape[:-1], N))
    planes = [p if p.is_contiguous() else p.contiguous() for p in planes]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    exact = os.environ.get("INDUCTOR_FUSE_EXACT_MATVEC", "0") == "1"
    if M <= MATVEC_MAX_M[fmt] and not exact:
        out = matvec(x2, planes, bias, fmt)
    elif exact or M < FUSED_GEMM_MAX_M[fmt] or os.environ.get("INDUCTOR_FUSE_GEMM", "") == "fused":
        out = qgemm(x2, planes, bias, fmt)
    else:
        out = dequant_mm(x2, planes, bias, fmt)
    return out.reshape(*x.shape[:-1], N)
