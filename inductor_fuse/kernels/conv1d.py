"""The CUDA implementation of torch.ops.inductor_fuse.depthwise_conv1d (the op: inductor_fuse/conv1d.py).

    grid (B, cdiv(C, BLOCK_C), cdiv(length, BLOCK_T)); program (b, channel block, output block):
      acc[c, t] = bias[c] + sum_{i < K} w[c, i] * x[b, c, start + t + i - pad]   (0 outside x)
      out[b, c, t] = acc or acc * sigmoid(acc) (SILU), in out's dtype; float32 throughout

K is a compile-time constant (a short kernel: one load per tap, unrolled). The channel dimension is
the tile's fast one when x's channel stride is 1 (a [B, L, C] activation transposed, as Mamba-style
layers hand it over): loads along C are then contiguous. The grid is a function of the shapes: CUDA
graph safe, no host sync.

On CUDA tensors the op runs this kernel; a kernel that cannot compile or take the call runs the
reference instead and a WARNING says so once per error; a CUDA out-of-memory error is raised, not
retried (_common.kernel_or_reference). Registration happens at import; nothing touches a device then.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..conv1d import MAX_TAPS, check_depthwise_conv1d_args, depthwise_conv1d, depthwise_conv1d_reference
from ._common import kernel_or_reference


@triton.jit
def _conv1d_kernel(
    x_ptr,  # [B, C, L], strides sxb, sxc, sxl
    w_ptr,  # [C, K] contiguous
    bias_ptr,  # [C] (HAS_BIAS)
    out_ptr,  # [B, C, length] contiguous
    C,
    L,
    pad,
    start,
    length,
    sxb,
    sxc,
    sxl,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    C_FAST: tl.constexpr,  # channels along the tile's fast dimension (x's channel stride is 1)
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    if C_FAST:
        c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]  # [1, BLOCK_C]
        t = (tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T))[:, None]  # [BLOCK_T, 1]
        acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    else:
        c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # [BLOCK_C, 1]
        t = (tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T))[None, :]  # [1, BLOCK_T]
        acc = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
    cm = c < C
    tm = t < length
    x_row = x_ptr + b * sxb + c.to(tl.int64) * sxc
    for i in tl.static_range(K):
        pos = start + t + i - pad  # x's position for output t and tap i; < 0: the zero padding
        xv = tl.load(x_row + pos * sxl, mask=cm & tm & (pos >= 0) & (pos < L), other=0.0)
        wv = tl.load(w_ptr + c * K + i, mask=cm, other=0.0)
        acc += wv.to(tl.float32) * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + (b * C + c) * length + t, acc.to(out_ptr.dtype.element_ty), mask=cm & tm)


def depthwise_conv1d_cuda(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    """Launch the kernel (arguments already checked); x on a CUDA device (or the CPU under
    TRITON_INTERPRET=1)."""
    B, C, L = x.shape
    K = w.shape[1]
    if K > MAX_TAPS:
        raise ValueError(f"depthwise_conv1d kernel: {K} taps, more than {MAX_TAPS}")
    out = torch.empty((B, C, length), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_t = min(triton.next_power_of_2(length), 64)
    block_c = max(min(triton.next_power_of_2(C), 2048 // block_t), 16)
    w = w.contiguous()
    grid = (B, triton.cdiv(C, block_c), triton.cdiv(length, block_t))
    _conv1d_kernel[grid](
        x,
        w,
        w if bias is None else bias,
        out,
        C,
        L,
        pad,
        start,
        length,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        K=K,
        HAS_BIAS=bias is not None,
        SILU=silu,
        C_FAST=x.stride(1) == 1 and C > 1,
        BLOCK_C=block_c,
        BLOCK_T=block_t,
        num_warps=4,
    )
    return out


@depthwise_conv1d.register_kernel("cuda")
def _depthwise_conv1d_cuda(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    args = (x, w, bias, pad, start, length, silu)
    check_depthwise_conv1d_args(*args)
    return kernel_or_reference("depthwise_conv1d", depthwise_conv1d_cuda, depthwise_conv1d_reference, *args)
