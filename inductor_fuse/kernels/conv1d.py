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

from ..conv1d import (
    MAX_TAPS,
    check_depthwise_conv1d_args,
    check_depthwise_conv1d_update_args,
    depthwise_conv1d,
    depthwise_conv1d_reference,
    depthwise_conv1d_update,
    depthwise_conv1d_update_reference,
)
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
    state_ptr,  # [B, C, S] (HAS_STATE): the left context, then (program t-block 0) its update
    ssb,
    ssc,
    ssl,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    C_FAST: tl.constexpr,  # channels along the tile's fast dimension (x's channel stride is 1)
    HAS_STATE: tl.constexpr,  # positions < 0 read the state (pad = S) instead of zeros; state updated
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= S (HAS_STATE)
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
    s_row = state_ptr + b * ssb + c.to(tl.int64) * ssc
    for i in tl.static_range(K):
        pos = start + t + i - pad  # x's position for output t and tap i; < 0: the padding (or state)
        xv = tl.load(x_row + pos * sxl, mask=cm & tm & (pos >= 0) & (pos < L), other=0.0)
        if HAS_STATE:  # the state's position pad + pos (only t-block 0 reaches it: BLOCK_T >= S)
            xv += tl.load(s_row + (pos + pad) * ssl, mask=cm & tm & (pos < 0) & (pos + pad >= 0), other=0.0)
        wv = tl.load(w_ptr + c * K + i, mask=cm, other=0.0)
        acc += wv.to(tl.float32) * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + (b * C + c) * length + t, acc.to(out_ptr.dtype.element_ty), mask=cm & tm)
    if HAS_STATE:
        if tl.program_id(2) == 0:  # the new state: the last S positions of cat(state, x)
            if C_FAST:
                j = tl.arange(0, BLOCK_S)[:, None]
            else:
                j = tl.arange(0, BLOCK_S)[None, :]
            src = L + j  # position in cat(state, x), of length S + L
            jm = cm & (j < pad)
            v = tl.load(s_row + src * ssl, mask=jm & (src < pad), other=0.0)
            v += tl.load(x_row + (src - pad) * sxl, mask=jm & (src >= pad), other=0.0)
            tl.debug_barrier()  # every read of the old state in this program is done
            tl.store(s_row + j * ssl, v, mask=jm)


def depthwise_conv1d_cuda(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    pad: int,
    start: int,
    length: int,
    silu: bool,
    state: Tensor | None = None,
) -> Tensor:
    """Launch the kernel (arguments already checked); x on a CUDA device (or the CPU under
    TRITON_INTERPRET=1). With `state` [B, C, S] (depthwise_conv1d_update; pad = S): the left
    context is the state, which the kernel then updates in place to the last S positions of
    cat(state, x)."""
    B, C, L = x.shape
    K = w.shape[1]
    if K > MAX_TAPS:
        raise ValueError(f"depthwise_conv1d kernel: {K} taps, more than {MAX_TAPS}")
    out = torch.empty((B, C, length), dtype=x.dtype, device=x.device)
    if B * C == 0 or (length == 0 and state is None):
        return out
    block_t, block_c, num_warps = launch_config(C, length, pad, state is not None)
    w = w.contiguous()
    grid = (B, triton.cdiv(C, block_c), max(triton.cdiv(length, block_t), 1))
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
        x if state is None else state,
        *(state.stride() if state is not None else (0, 0, 0)),
        K=K,
        HAS_BIAS=bias is not None,
        SILU=silu,
        C_FAST=x.stride(1) == 1 and C > 1,
        HAS_STATE=state is not None,
        BLOCK_C=block_c,
        BLOCK_T=block_t,
        BLOCK_S=triton.next_power_of_2(max(pad, 1)) if state is not None else 1,
        num_warps=num_warps,
    )
    return out


DECODE_BLOCK_C = 128  # channels per program for a few positions (decode): C = 8192 -> 64 programs
DECODE_WARPS = 4  # (nvidia-h200 sweep, C 8192 T 1: 128 x 4 warps 1.54 us, 256 x 2 2.38, 2048 x 4 4.79)


def launch_config(C: int, length: int, pad: int, has_state: bool) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps). Up to 2048 outputs a program; for a few positions (decode, T
    = 1) fewer channels a program, so that the grid has enough programs to spread the loads over
    many SMs (C = 8192 in 2048-channel programs was 4 programs)."""
    block_t = min(triton.next_power_of_2(max(length, 1)), 64)
    if has_state and length > block_t:  # only t-block 0 reads the state, which it then writes
        block_t = max(block_t, triton.next_power_of_2(pad))
    if block_t <= 4:
        return block_t, max(min(triton.next_power_of_2(C), DECODE_BLOCK_C // block_t), 16), DECODE_WARPS
    return block_t, max(min(triton.next_power_of_2(C), 2048 // block_t), 16), 4


def depthwise_conv1d_update_cuda(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> Tensor:
    """depthwise_conv1d_update in one launch (arguments already checked)."""
    return depthwise_conv1d_cuda(x, w, bias, state.shape[2], start, length, silu, state=state)


@depthwise_conv1d.register_kernel("cuda")
def _depthwise_conv1d_cuda(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, start: int, length: int, silu: bool
) -> Tensor:
    args = (x, w, bias, pad, start, length, silu)
    check_depthwise_conv1d_args(*args)
    return kernel_or_reference("depthwise_conv1d", depthwise_conv1d_cuda, depthwise_conv1d_reference, *args)


@depthwise_conv1d_update.register_kernel("cuda")
def _depthwise_conv1d_update_cuda(
    state: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, start: int, length: int, silu: bool
) -> Tensor:
    args = (state, x, w, bias, start, length, silu)
    check_depthwise_conv1d_update_args(*args)
    return kernel_or_reference(
        "depthwise_conv1d_update", depthwise_conv1d_update_cuda, depthwise_conv1d_update_reference, *args
    )
