"""torch.ops.inductor_fuse.glu_linear: the gate|up linear of a gated MLP over float weights, with its
activation and product -- what the ``glu`` rule (patterns/glu.py) makes of float gate and up
projections (quantized ones become ``glu_qlinear``, quant/op.py).

    glu_linear(Tensor x, Tensor weight, Tensor? bias, str act) -> Tensor

    x:      [..., K]  float32 / bfloat16 / float16
    weight: [2I, K]   x's dtype: gate row i at row 2i, up row i at row 2i + 1 (interleaved)
    bias:   [2I] or None, interleaved the same way, x's dtype
    act:    "silu" or "gelu_tanh"
    returns act(gate) * up, [..., I] in x's dtype, where gate | up = x @ weight^T + bias;
            float32 accumulation, activation and product, one rounding at the end

This module defines the op and what every device shares:
- default (CPU, any device without a kernel): the pure-torch `glu_linear_reference`;
- fake: shape and dtype, with the same validation (`check_glu_linear_args`: a ValueError naming
  the problem).
The CUDA implementation (Triton) is registered on this op by kernels/glu_linear.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .quant.op import FLOAT_DTYPES, GLU_ACTS, glu_act


def check_glu_linear_args(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> int:
    """Validate glu_linear's arguments; returns I. Raises ValueError naming the problem."""
    if act not in GLU_ACTS:
        raise ValueError(f"glu_linear: act must be one of {GLU_ACTS}, got {act!r}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"glu_linear: x must be float32, bfloat16 or float16, got {x.dtype}")
    if weight.dim() != 2 or weight.shape[0] % 2 or x.dim() < 1 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"glu_linear: weight must be [2I, K] with K = x.shape[-1], got weight {list(weight.shape)}, "
            f"x {list(x.shape)}"
        )
    if weight.dtype != x.dtype:
        raise ValueError(f"glu_linear: weight dtype {weight.dtype} differs from x's {x.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(
            f"glu_linear: bias must be [{weight.shape[0]}] of {x.dtype}, got {list(bias.shape)} of {bias.dtype}"
        )
    return weight.shape[0] // 2


def glu_linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    """glu_linear's pure-torch body and oracle (arguments already checked): float32 math."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return glu_act(y, act).to(x.dtype)


@torch.library.custom_op("inductor_fuse::glu_linear", mutates_args=())
def glu_linear(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    """Pure-torch reference (the default for every device); the CUDA kernel is registered by
    kernels/glu_linear.py."""
    check_glu_linear_args(x, weight, bias, act)
    return glu_linear_reference(x, weight, bias, act)


@glu_linear.register_fake
def _glu_linear_fake(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    inter = check_glu_linear_args(x, weight, bias, act)
    return x.new_empty((*x.shape[:-1], inter))
