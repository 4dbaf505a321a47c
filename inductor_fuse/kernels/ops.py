"""The CUDA implementations of torch.ops.inductor_fuse.qlinear and glu_qlinear, of their variants
qlinear_q8 / glu_qlinear_q8 that take the quantized activation, and of quantize_act, which computes
it (the ops: quant/op.py).

On CUDA tensors the op runs the Triton kernels of kernels/dispatch.py: W4A8 dp4a matvec for small
M (activation quantized per 32-group to int8, as llama.cpp's MMVQ), dequant + tl.dot GEMM for
large M. If that path raises (a kernel that cannot compile or take the call), the call runs the
pure-torch reference instead and a WARNING says so once per format and error; a CUDA
out-of-memory error is raised, not retried. quantize_act's kernel is `_common.act_quant`; it runs
only when x has at most `max_m` rows (and config.settings.exact_matvec is off): otherwise no
consumer's matvec runs and it returns uninitialized buffers of the right shapes without a launch.
If the kernel raises, the pure-torch quantize_act_reference answers (WARNING once).

Registration happens at import (`import inductor_fuse` imports this module); nothing touches a
device then.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from .. import config as knobs
from ..quant.op import (
    act_shapes,
    check_glu_qlinear_args,
    check_qlinear_args,
    check_quantize_act_args,
    check_quantized_activation,
    dequantize_linear,
    empty_quantized_activation,
    glu_act,
    glu_qlinear,
    glu_qlinear_q8,
    glu_qlinear_reference,
    qlinear,
    qlinear_q8,
    quantize_act,
    quantize_act_reference,
)
from . import dispatch
from ._common import act_quant

log = logging.getLogger("inductor_fuse")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _qlinear(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa=None) -> Tensor:
    try:
        return dispatch.qlinear_cuda(x, planes, bias, fmt, xa=xa)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference needs more memory, not less
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        _warn_kernel_fallback(fmt, type(e).__name__, _first_line(e))
        return dequantize_linear(x, planes, bias, fmt)


def _glu_qlinear(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa=None) -> Tensor:
    try:
        return dispatch.qlinear_cuda(x, planes, bias, fmt, act, xa=xa)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference needs more memory, not less
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        _warn_kernel_fallback(f"{fmt} GLU", type(e).__name__, _first_line(e))
    try:  # the plain kernels over the interleaved rows, then the GLU as its own step
        return glu_act(dispatch.qlinear_cuda(x, planes, bias, fmt, xa=xa).float(), act).to(x.dtype)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        _warn_kernel_fallback(fmt, type(e).__name__, _first_line(e))
        return glu_qlinear_reference(x, planes, bias, fmt, act)


@qlinear.register_kernel("cuda")
def _qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    return _qlinear(x, planes, bias, fmt)


@glu_qlinear.register_kernel("cuda")
def _glu_qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    return _glu_qlinear(x, planes, bias, fmt, act)


@qlinear_q8.register_kernel("cuda")
def _qlinear_q8_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa: list[Tensor]) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    check_quantized_activation(x, xa)
    return _qlinear(x, planes, bias, fmt, xa)


@glu_qlinear_q8.register_kernel("cuda")
def _glu_qlinear_q8_cuda(
    x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa: list[Tensor]
) -> Tensor:
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    check_quantized_activation(x, xa)
    return _glu_qlinear(x, planes, bias, fmt, act, xa)


@quantize_act.register_kernel("cuda")
def _quantize_act_cuda(x: Tensor, interleave: bool, max_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    K = check_quantize_act_args(x, interleave, max_m)
    M = x.numel() // K
    if M == 0 or M > max_m or knobs.settings.exact_matvec:  # no consumer's matvec runs: nothing reads it
        return empty_quantized_activation(x)
    try:
        xa = act_quant(x.reshape(M, K), interleave=interleave)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- a kernel that cannot compile or take the call
        _warn_act_quant_fallback(type(e).__name__, _first_line(e))
        return quantize_act_reference(x, interleave)
    return tuple(t.reshape(shape) for t, shape in zip((xa.xq, xa.xd, xa.xs32, xa.xs16), act_shapes(x)))


@functools.cache
def _warn_kernel_fallback(fmt: str, error: str, message: str) -> None:
    log.warning(
        "inductor_fuse: the %s CUDA kernel failed (%s: %s); this call and others like it run the "
        "pure-torch reference (dequantize + F.linear): correct, slower",
        fmt,
        error,
        message,
    )


@functools.cache
def _warn_act_quant_fallback(error: str, message: str) -> None:
    log.warning(
        "inductor_fuse: the act_quant CUDA kernel failed (%s: %s); this call and others like it "
        "quantize the activation in pure torch (the same formula): correct, slower",
        error,
        message,
    )
