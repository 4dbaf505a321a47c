"""torch.ops.inductor_fuse.qlinear: the quantized linear every pattern and QuantizedLinear calls,
and torch.ops.inductor_fuse.glu_qlinear, the gate|up linear of a GLU with its activation and product.

    qlinear(Tensor x, Tensor[] planes, Tensor? bias, str fmt) -> Tensor
    x: [..., K] float (fp32 / bf16 / fp16); planes: the format's planes of a weight [N, K]
    (docs/design.md contract); bias: [N] or None; returns [..., N] in x.dtype.

    glu_qlinear(Tensor x, Tensor[] planes, Tensor? bias, str fmt, str act) -> Tensor
    planes: a weight [2I, K] whose rows interleave gate and up (row 2i: gate row i, row 2i + 1: up
    row i), bias [2I] likewise; with y = x W^T + b in float32:
    returns act(y[..., 0::2]) * y[..., 1::2], [..., I] in x.dtype; act: "silu" or "gelu_tanh".

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


GLU_ACTS = ("silu", "gelu_tanh")


def glu_act(y: Tensor, act: str) -> Tensor:
    """act(gate) * up of an interleaved gate|up output y [..., 2I] (any float dtype, computed as is)."""
    gate, up = y[..., 0::2], y[..., 1::2]
    return (F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")) * up


def check_glu_qlinear_args(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str, act: str) -> int:
    """Validate glu_qlinear's arguments; returns I. Raises ValueError naming the problem."""
    N, _ = check_qlinear_args(x, planes, bias, fmt)
    if act not in GLU_ACTS:
        raise ValueError(f"glu_qlinear: act must be one of {GLU_ACTS}, got {act!r}")
    if N % 2:
        raise ValueError(
            f"glu_qlinear[{fmt}]: the weight must have an even number of rows (gate, up interleaved), got {N}"
        )
    return N // 2


def glu_qlinear_reference(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    """glu_qlinear's pure-torch body and oracle (arguments already checked): float32 math."""
    return glu_act(qlinear_reference(x.float(), planes, bias, fmt), act).to(x.dtype)


@torch.library.custom_op("inductor_fuse::glu_qlinear", mutates_args=())
def glu_qlinear(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    """Pure-torch reference (the default for every device); the CUDA kernels are registered by
    kernels/ops.py."""
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    return glu_qlinear_reference(x, planes, bias, fmt, act)


@glu_qlinear.register_fake
def _glu_qlinear_fake(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    inter = check_glu_qlinear_args(x, planes, bias, fmt, act)
    return x.new_empty((*x.shape[:-1], inter))


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
