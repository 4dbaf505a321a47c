"""torch.ops.inductor_fuse.qlinear: the quantized linear every pattern and QuantizedLinear calls.

    qlinear(Tensor x, Tensor[] planes, Tensor? bias, str fmt) -> Tensor
    x: [..., K] float (fp32 / bf16 / fp16); planes: the format's planes of a weight [N, K]
    (docs/design.md contract); bias: [N] or None; returns [..., N] in x.dtype.

This module defines the op and what every device shares:
- default (CPU, any device without a kernel): the pure-torch reference `dequantize_linear`,
  FORMATS[fmt].dequantize(planes).to(x.dtype) then F.linear.
- fake: shape [..., N], dtype x.dtype, with the same validation (`check_qlinear_args`: a
  ValueError naming the problem).
The CUDA implementation (Triton kernels) is registered on this op by kernels/ops.py; importing
`inductor_fuse` imports both. Registration happens at import; nothing touches a device then.
This is a custom_op, not a triton_op: a triton_op breaks torch.compile on a machine without a GPU
(docs/design.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .formats import FORMATS

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_qlinear_args(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str) -> tuple[int, int]:
    """Validate the op's arguments; returns (N, K). Raises ValueError naming the problem."""
    if fmt not in FORMATS:
        raise ValueError(f"qlinear: unknown format {fmt!r}; known: {sorted(FORMATS)}")
    f = FORMATS[fmt]
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"qlinear: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("qlinear: x must have at least one dimension [..., K]")
    K = x.shape[-1]
    if K <= 0 or K % f.block_size != 0:
        raise ValueError(
            f"qlinear[{fmt}]: K = x.shape[-1] = {K} must be a positive multiple of the format's block of {f.block_size}"
        )
    specs = f.plane_specs
    if len(planes) != len(specs):
        raise ValueError(f"qlinear[{fmt}]: expected {len(specs)} planes {[s.name for s in specs]}, got {len(planes)}")
    N = planes[0].shape[0] if planes[0].dim() >= 1 else -1
    for spec, p, shape in zip(specs, planes, f.plane_shapes(max(N, 0), K)):
        if p.dtype != spec.dtype:
            raise ValueError(f"qlinear[{fmt}]: plane {spec.name!r} must be {spec.dtype}, got {p.dtype}")
        if tuple(p.shape) != tuple(shape):
            raise ValueError(
                f"qlinear[{fmt}]: plane {spec.name!r} must have shape {tuple(shape)} for a weight "
                f"[N={N}, K={K}] (K from x), got {tuple(p.shape)}"
            )
        if p.device != x.device:
            raise ValueError(f"qlinear[{fmt}]: plane {spec.name!r} is on {p.device}, x on {x.device}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"qlinear[{fmt}]: bias must have shape [{N}], got {tuple(bias.shape)}")
        if bias.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"qlinear[{fmt}]: bias must be floating point, got {bias.dtype}")
    return N, K


def dequantize_linear(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    """The op's pure-torch body (arguments already checked): dequantize to x.dtype, F.linear."""
    w = FORMATS[fmt].dequantize(planes).to(x.dtype)
    return F.linear(x, w, bias.to(x.dtype) if bias is not None else None)


@torch.library.custom_op("inductor_fuse::qlinear", mutates_args=())
def qlinear(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    """Pure-torch reference: dequantize -> F.linear (the default for every device)."""
    check_qlinear_args(x, planes, bias, fmt)
    return dequantize_linear(x, planes, bias, fmt)


@qlinear.register_fake
def _qlinear_fake(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    N, _ = check_qlinear_args(x, planes, bias, fmt)
    return x.new_empty((*x.shape[:-1], N))


def qlinear_reference(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    """The oracle every kernel is tested against (float32 math, result in x.dtype)."""
    w = FORMATS[fmt].dequantize(planes)
    out = x.float() @ w.T
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@torch.library.custom_op("inductor_fuse::dequantize", mutates_args=())
def dequantize(planes: list[Tensor], fmt: str, dtype: torch.dtype) -> Tensor:
    """The weight [N, K] of ``planes`` in ``fmt``, dequantized (float32 math) and cast to ``dtype``.

    What the ``dequant_cpu`` rule puts in place of a qlinear over frozen planes on CPU: freezing
    then folds it into a constant, computed once at compile time."""
    return FORMATS[fmt].dequantize(planes).to(dtype)


@dequantize.register_fake
def _dequantize_fake(planes: list[Tensor], fmt: str, dtype: torch.dtype) -> Tensor:
    f = FORMATS[fmt]
    n, k = f.check_planes(planes)[1:]
    return planes[0].new_empty((n, k), dtype=dtype)
