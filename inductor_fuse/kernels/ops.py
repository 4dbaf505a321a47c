"""The CUDA implementations of torch.ops.inductor_fuse.qlinear and glu_qlinear (the ops: quant/op.py).

On CUDA tensors the op runs the Triton kernels of kernels/dispatch.py: W4A8 dp4a matvec for small
M (activation quantized per 32-group to int8, as llama.cpp's MMVQ), dequant + tl.dot GEMM for
large M. If that path raises (a kernel that cannot compile or take the call), the call runs the
pure-torch reference instead and a WARNING says so once per format and error; a CUDA
out-of-memory error is raised, not retried.

Registration happens at import (`import inductor_fuse` imports this module); nothing touches a
device then.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from ..quant.op import (
    check_glu_qlinear_args,
    check_qlinear_args,
    dequantize_linear,
    glu_act,
    glu_qlinear,
    glu_qlinear_reference,
    qlinear,
)
from . import dispatch

log = logging.getLogger("inductor_fuse")


@qlinear.register_kernel("cuda")
def _qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    try:
        return dispatch.qlinear_cuda(x, planes, bias, fmt)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference needs more memory, not less
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        _warn_kernel_fallback(fmt, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return dequantize_linear(x, planes, bias, fmt)


@glu_qlinear.register_kernel("cuda")
def _glu_qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    try:
        return dispatch.qlinear_cuda(x, planes, bias, fmt, act)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference needs more memory, not less
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        _warn_kernel_fallback(f"{fmt} GLU", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    try:  # the plain kernels over the interleaved rows, then the GLU as its own step
        return glu_act(dispatch.qlinear_cuda(x, planes, bias, fmt).float(), act).to(x.dtype)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        _warn_kernel_fallback(fmt, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return glu_qlinear_reference(x, planes, bias, fmt, act)


@functools.cache
def _warn_kernel_fallback(fmt: str, error: str, message: str) -> None:
    log.warning(
        "inductor_fuse: the %s CUDA kernel failed (%s: %s); this call and others like it run the "
        "pure-torch reference (dequantize + F.linear): correct, slower",
        fmt,
        error,
        message,
    )
