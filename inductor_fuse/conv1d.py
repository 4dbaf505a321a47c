"""torch.ops.inductor_fuse.depthwise_conv1d: a depthwise causal 1-D convolution, SiLU optional -- the
short convolution of Mamba-style layers and of the GatedDeltaNet layers of Qwen3.5 / Qwen3-Next.

    depthwise_conv1d(Tensor x, Tensor w, Tensor? bias, int pad, int start, int length, bool silu) -> Tensor

    x:    [B, C, L]  float32 / bfloat16 / float16, any strides (a [B, L, C] tensor transposed is read
                     in place)
    w:    [C, K]     x's dtype: channel c's taps (an nn.Conv1d weight [C, 1, K] without its middle dim)
    bias: [C] or None, x's dtype
    pad >= 0:        zeros put on the left of x (K - 1: causal)
    the full output  full[b, c, t] = bias[c] + sum_{i < K} w[c, i] * xp[b, c, t + i],
                     xp = pad zeros then x, t in [0, L + pad - K + 1)
    returns          full[:, :, start : start + length], then x * sigmoid(x) when silu:
                     [B, C, length] contiguous, x's dtype; float32 accumulation

Every spelling that the rule (patterns/conv1d.py) rewrites is one of these: ``nn.Conv1d(C, C, K,
groups=C, padding=K - 1)`` then ``[..., :T]`` (pad K - 1, start 0); ``F.pad(x, (K - 1, 0))`` then a
conv without padding (pad K - 1, start 0, length L); at decode, the conv state concatenated with the
new tokens and a conv without padding, of which the last T outputs are kept (pad 0, start
L - K + 1 - T).

This module defines the op and what every device shares:
- default (CPU, any device without a kernel): the pure-torch `depthwise_conv1d_reference`;
- fake: shape and dtype, with the same validation (`check_depthwise_conv1d_args`: a ValueError
  naming the problem).
The CUDA implementation (a Triton kernel) is registered on this op by kernels/conv1d.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .quant.op import FLOAT_DTYPES

MAX_TAPS = 16  # a short convolution: the rule matches up to this many taps, the kernel unrolls them


def full_length(L: int, K: int, pad: int) -> int:
    """Length of the full output: positions t with xp[t .. t + K - 1] inside the padded input."""
    return L + pad - K + 1


def check_depthwise_conv1d_args(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> None:
    """Validate the op's arguments (module docstring). Raises ValueError naming the problem."""
    if x.dim() != 3:
        raise ValueError(f"depthwise_conv1d: x must be [B, C, L], got shape {tuple(x.shape)}")
    if w.dim() != 2:
        raise ValueError(f"depthwise_conv1d: w must be [C, K], got shape {tuple(w.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"depthwise_conv1d: x must be float32, bfloat16 or float16, got {x.dtype}")
    B, C, L = x.shape
    if w.shape[0] != C or w.shape[1] < 1:
        raise ValueError(f"depthwise_conv1d: w must be [C = {C}, K >= 1], got {tuple(w.shape)}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"depthwise_conv1d: bias must be [C = {C}], got {tuple(bias.shape)}")
    for name, t in (("w", w), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(
                f"depthwise_conv1d: {name} must have x's dtype and device ({x.dtype}, {x.device}), "
                f"got {t.dtype}, {t.device}"
            )
    n = full_length(L, w.shape[1], pad)
    if pad < 0 or start < 0 or length < 0 or start + length > n:
        raise ValueError(
            f"depthwise_conv1d: need pad >= 0 and 0 <= start <= start + length <= L + pad - K + 1 = {n}, "
            f"got pad {pad}, start {start}, length {length}"
        )


def depthwise_conv1d_reference(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    """The op's pure-torch body (arguments already checked): F.conv1d in float32."""
    C, K = w.shape
    if length == 0:  # (the padded input may be shorter than the taps: no output to compute)
        return x.new_empty((x.shape[0], C, 0))
    xp = F.pad(x.float(), (pad, 0))
    y = F.conv1d(xp, w.float()[:, None, :], None if bias is None else bias.float(), groups=C)
    y = y[:, :, start : start + length]
    if silu:
        y = F.silu(y)
    return y.to(x.dtype).contiguous()


@torch.library.custom_op("inductor_fuse::depthwise_conv1d", mutates_args=())
def depthwise_conv1d(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    """Pure-torch reference (the default for every device); the CUDA kernel is registered by
    kernels/conv1d.py."""
    check_depthwise_conv1d_args(x, w, bias, pad, start, length, silu)
    return depthwise_conv1d_reference(x, w, bias, pad, start, length, silu)


@depthwise_conv1d.register_fake
def _depthwise_conv1d_fake(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    check_depthwise_conv1d_args(x, w, bias, pad, start, length, silu)
    return x.new_empty((x.shape[0], x.shape[1], length))


# ---------------------------------------------------------------------------------------------
# The decode form with its state update: one op instead of cat + conv + a copy back into the state
# ---------------------------------------------------------------------------------------------


def check_depthwise_conv1d_update_args(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> None:
    """Validate depthwise_conv1d_update's arguments: those of depthwise_conv1d over cat(state, x)
    without padding, and a state [B, C, S] of x's dtype and device."""
    if state.dim() != 3 or x.dim() != 3 or tuple(state.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(
            f"depthwise_conv1d_update: state [B, C, S] and x [B, C, T] must agree on B, C, got "
            f"{tuple(state.shape)} and {tuple(x.shape)}"
        )
    if state.dtype != x.dtype or state.device != x.device:
        raise ValueError(
            f"depthwise_conv1d_update: state must have x's dtype and device ({x.dtype}, {x.device}), "
            f"got {state.dtype}, {state.device}"
        )
    # the state in the place of a left padding of S: the same lengths and bounds to check
    check_depthwise_conv1d_args(x, w, bias, state.shape[2], start, length, silu)


def depthwise_conv1d_update_reference(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> Tensor:
    """The pure-torch body (arguments already checked): the convolution over cat(state, x), then the
    state becomes the last S positions of cat(state, x)."""
    xs = torch.cat([state, x], -1)
    y = depthwise_conv1d_reference(xs, w, bias, 0, start, length, silu)
    S = state.shape[2]
    state.copy_(xs[:, :, xs.shape[2] - S :])
    return y


@torch.library.custom_op("inductor_fuse::depthwise_conv1d_update", mutates_args=("state",))
def depthwise_conv1d_update(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> Tensor:
    """depthwise_conv1d(cat(state, x), w, bias, 0, start, length, silu), and the state [B, C, S]
    updated in place to the last S positions of cat(state, x): the decode step of a short
    convolution (the conv state holds the last inputs). Pure-torch reference for every device; the
    CUDA kernel (one launch, the state written after it is read) is registered by kernels/conv1d.py."""
    check_depthwise_conv1d_update_args(state, x, w, bias, start, length, silu)
    return depthwise_conv1d_update_reference(state, x, w, bias, start, length, silu)


@depthwise_conv1d_update.register_fake
def _depthwise_conv1d_update_fake(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> Tensor:
    check_depthwise_conv1d_update_args(state, x, w, bias, start, length, silu)
    return x.new_empty((x.shape[0], x.shape[1], length))
