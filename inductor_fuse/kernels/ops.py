"""The CUDA implementations of torch.ops.inductor_fuse.qlinear and glu_qlinear (the ops: quant/op.py).

On CUDA tensors the op runs the Triton kernels of kernels/dispatch.py: W4A8 dp4a matvec for small
M (activation quantized per 32-group to int8, as llama.cpp's MMVQ), dequant + tl.dot GEMM for
large M. If that path raises (a kernel that cannot compile or take the call), the call runs the
pure-torch reference instead and a WARNING says so once per format and error; a CUDA
out-of-memory error is raised, not retried (_common.kernel_or_reference). glu_qlinear falls back
in two steps: the plain kernels and the GLU as its own step, then the reference.

Registration happens at import (`import inductor_fuse` imports this module); nothing touches a
device then.
"""

from __future__ import annotations

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
from ._common import kernel_or_reference

REFERENCE = "the pure-torch reference (dequantize + F.linear)"


@qlinear.register_kernel("cuda")
def _qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    return kernel_or_reference(fmt, dispatch.qlinear_cuda, dequantize_linear, x, planes, bias, fmt, instead=REFERENCE)


@glu_qlinear.register_kernel("cuda")
def _glu_qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    args = (x, planes, bias, fmt, act)
    return kernel_or_reference(f"{fmt} GLU", dispatch.qlinear_cuda, _glu_unfused, *args, instead=REFERENCE)


def _glu_unfused(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    """The GLU epilogue failed: the plain kernels over the interleaved rows, then the GLU as its own
    step; the reference if those fail too."""
    args = (x, planes, bias, fmt, act)
    return kernel_or_reference(fmt, _plain_then_glu, glu_qlinear_reference, *args, instead=REFERENCE)


def _plain_then_glu(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    return glu_act(dispatch.qlinear_cuda(x, planes, bias, fmt).float(), act).to(x.dtype)
