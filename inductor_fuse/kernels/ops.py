"""The CUDA implementations of torch.ops.inductor_fuse.qlinear and glu_qlinear, of their variants
qlinear_q8 / glu_qlinear_q8 that take the quantized activation, and of quantize_act, which computes
it (the ops: quant/op.py).

On CUDA tensors the op runs the Triton kernels of kernels/dispatch.py: W4A8 dp4a matvec for small
M (activation quantized per 32-group to int8, as llama.cpp's MMVQ), w4a16_mma / int8_mma (Q4_K,
Q6_K) or the fused Triton GEMM qgemm for a few rows more, dequant + cuBLAS for large M. If that
path raises (a kernel that cannot compile or take the call), the call runs the
pure-torch reference instead and a WARNING says so once per format and error; a CUDA
out-of-memory error is raised, not retried (_common.kernel_or_reference). glu_qlinear falls back
in two steps: the plain kernels and the GLU as its own step, then the reference. The _q8 variants
(qlinear_q8, glu_qlinear_q8) take the activation already quantized by quantize_act and fall back
the same way. quantize_act's kernel is `_common.act_quant`; it runs only when x has at most
`max_m` rows (and config.settings.exact_matvec is off): otherwise no consumer's matvec runs and it
returns uninitialized buffers of the right shapes without a launch. If the kernel raises, the
pure-torch quantize_act_reference answers (WARNING once). rmsnorm_quantize_act (quantize_act fused
into the RMSNorm that makes x) runs `norm_quant.rmsnorm_quantize`: y always, the int8 activation
under the same condition as quantize_act (else uninitialized buffers); its fallback is the
pure-torch RMSNorm (and quantization). add_rmsnorm_quantize_act is the same with the residual add
before the norm in the kernel too (s = a + b stored; the norm of s), and b's own RMSNorm before the
add when the op has one (Gemma 3's sandwich norms).
glu_qlinear_q8_quantize_act: the GLU, then quantize_act's body on its output; with
INDUCTOR_FUSE_GLU_QUANT=1 (config.settings.glu_quant) and the matvec running, one launch: the GLU
matvec quantizes its own output (its fallback: the two steps).

Registration happens at import (`import inductor_fuse` imports this module); nothing touches a
device then.
"""

from __future__ import annotations

from torch import Tensor

from .. import config as knobs
from ..quant.op import (
    act_shapes,
    add_rmsnorm_quantize_act,
    check_add_rmsnorm_quantize_act_args,
    check_glu_qlinear_args,
    check_qlinear_args,
    check_quantize_act_args,
    check_quantized_activation,
    check_rmsnorm_quantize_act_args,
    dequantize_linear,
    empty_quantized_activation,
    glu_act,
    glu_qlinear,
    glu_qlinear_q8,
    glu_qlinear_q8_quantize_act,
    glu_qlinear_reference,
    qlinear,
    qlinear_q8,
    quantize_act,
    quantize_act_reference,
    rmsnorm_quantize_act,
    rmsnorm_quantize_act_reference,
    rmsnorm_reference,
)
from . import dispatch, norm_quant
from ._common import act_quant, kernel_or_reference
from .registry import KERNELS, kernel_spec

REFERENCE = "the pure-torch reference (dequantize + F.linear)"


@qlinear.register_kernel("cuda")
def _qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    return kernel_or_reference(fmt, dispatch.qlinear_cuda, dequantize_linear, x, planes, bias, fmt, instead=REFERENCE)


@glu_qlinear.register_kernel("cuda")
def _glu_qlinear_cuda(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str) -> Tensor:
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    return _glu(x, planes, bias, fmt, act, None)


@qlinear_q8.register_kernel("cuda")
def _qlinear_q8_cuda(
    x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa: list[Tensor], interleave: bool, max_m: int
) -> Tensor:
    check_qlinear_args(x, planes, bias, fmt)
    xa = _usable_activation(x, fmt, xa, interleave, max_m)
    return kernel_or_reference(fmt, _qlinear_xa, _qlinear_xa_reference, x, planes, bias, fmt, xa, instead=REFERENCE)


@glu_qlinear_q8.register_kernel("cuda")
def _glu_qlinear_q8_cuda(x, planes, bias, fmt, act, xa, interleave, max_m) -> Tensor:  # (types: the op's, quant/op.py)
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    return _glu(x, planes, bias, fmt, act, _usable_activation(x, fmt, xa, interleave, max_m))


@glu_qlinear_q8_quantize_act.register_kernel("cuda")
def _glu_qlinear_q8_quantize_act_cuda(
    x, planes, bias, fmt, act, xa, interleave, max_m, out_interleave, out_max_m
):  # (types: the op's, quant/op.py)
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    qa = _usable_activation(x, fmt, xa, interleave, max_m)
    M = x.numel() // x.shape[-1] if x.shape[-1] else 0
    args = (x, planes, bias, fmt, act, qa, out_interleave, out_max_m)
    # the GLU runs as its matvec (as glu_qlinear_q8 would: the same y whichever op the rule left)
    matvec = qa is not None and dispatch.kernel_for(fmt, M, planes[0].shape[0], x.shape[-1], x.dtype) == "matvec"
    if knobs.settings.glu_quant and matvec and matvec_reads(M, out_max_m):
        instead = "the GLU, then act_quant (two launches)"
        return kernel_or_reference(
            f"{fmt} GLU + act_quant", _glu_quantize_fused, _glu_then_quantize, *args, instead=instead
        )
    return _glu_then_quantize(*args)


def _glu_quantize_fused(x, planes, bias, fmt, act, xa, out_interleave, out_max_m):
    return dispatch.qlinear_cuda(x, planes, bias, fmt, act, xa=xa, ya_interleave=out_interleave)


def _glu_then_quantize(x, planes, bias, fmt, act, xa, out_interleave, out_max_m):
    """The GLU (its kernels, or the reference), then quantize_act's CUDA body on its output."""
    y = _glu(x, planes, bias, fmt, act, xa)
    return (y, *_quantize_act_cuda(y, out_interleave, out_max_m))


def _usable_activation(x: Tensor, fmt: str, xa: list[Tensor], interleave: bool, max_m: int) -> list[Tensor] | None:
    """xa when the matvec may read it: in fmt's layout (else a ValueError: a graph that pairs a
    format with another layout's activation is wrong, not slow), and filled (quantize_act launches
    only for at most max_m rows; more: None, the call quantizes x itself)."""
    check_quantized_activation(x, xa)
    want = kernel_spec(fmt).interleave if fmt in KERNELS else interleave
    if interleave != want:
        raise ValueError(
            f"qlinear_q8[{fmt}]: the activation was quantized with interleave={interleave}, the {fmt} matvec "
            f"reads interleave={want}"
        )
    M = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return xa if M <= max_m else None


def matvec_reads(M: int, max_m: int) -> bool:
    """Whether some consumer's matvec reads the int8 activation of M rows that quantize_act /
    rmsnorm_quantize_act make for consumers taking at most max_m: else they compute none of it."""
    return 0 < M <= max_m and not knobs.settings.exact_matvec


def _qlinear_xa(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa) -> Tensor:
    return dispatch.qlinear_cuda(x, planes, bias, fmt, xa=xa)


def _qlinear_xa_reference(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa) -> Tensor:
    return dequantize_linear(x, planes, bias, fmt)


def _glu(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa) -> Tensor:
    """The GLU epilogue kernel; if it fails, the plain kernels over the interleaved rows and the GLU
    as its own step; if those fail too, the reference."""
    args = (x, planes, bias, fmt, act, xa)
    return kernel_or_reference(f"{fmt} GLU", _glu_fused, _glu_unfused, *args, instead=REFERENCE)


def _glu_fused(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa) -> Tensor:
    return dispatch.qlinear_cuda(x, planes, bias, fmt, act, xa=xa)


def _glu_unfused(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa) -> Tensor:
    args = (x, planes, bias, fmt, act, xa)
    return kernel_or_reference(fmt, _plain_then_glu, _glu_reference, *args, instead=REFERENCE)


def _plain_then_glu(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa) -> Tensor:
    return glu_act(dispatch.qlinear_cuda(x, planes, bias, fmt, xa=xa).float(), act).to(x.dtype)


def _glu_reference(x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, act: str, xa) -> Tensor:
    return glu_qlinear_reference(x, planes, bias, fmt, act)


@quantize_act.register_kernel("cuda")
def _quantize_act_cuda(x: Tensor, interleave: bool, max_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    K = check_quantize_act_args(x, interleave, max_m)
    if not matvec_reads(x.numel() // K, max_m):
        return empty_quantized_activation(x)
    instead = "the pure-torch quantization (the same formula)"
    return kernel_or_reference(
        "act_quant", _quantize_act_kernel, quantize_act_reference, x, interleave, instead=instead
    )


def _quantize_act_kernel(x: Tensor, interleave: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    K = x.shape[-1]
    xa = act_quant(x.reshape(-1, K), interleave=interleave)  # (a module attribute: tests replace it)
    return tuple(t.reshape(shape) for t, shape in zip((xa.xq, xa.xd, xa.xs32, xa.xs16), act_shapes(x)))


@rmsnorm_quantize_act.register_kernel("cuda")
def _rmsnorm_quantize_act_cuda(
    h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool, interleave: bool, max_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    K = check_rmsnorm_quantize_act_args(h, w, eps, w_offset, cast_before_weight, interleave, max_m)
    M = h.numel() // K
    quant = matvec_reads(M, max_m)
    if M == 0:
        return (h.new_empty(h.shape), *empty_quantized_activation(h))
    args = (h, w, eps, w_offset, cast_before_weight, interleave, quant)
    instead = "the pure-torch RMSNorm and quantization (the same formulas)"
    return kernel_or_reference(
        "rmsnorm_quantize_act", _rmsnorm_quantize_kernel, _rmsnorm_quantize_reference, *args, instead=instead
    )


@add_rmsnorm_quantize_act.register_kernel("cuda")
def _add_rmsnorm_quantize_act_cuda(
    a, b, w, eps, w_offset, cast_before_weight, interleave, max_m, b_w=None, b_eps=0.0, b_w_offset=0.0, b_cast=False
):  # (types: the op's)
    b_norm = (b_w, b_eps, b_w_offset, b_cast)
    K = check_add_rmsnorm_quantize_act_args(a, b, w, eps, w_offset, cast_before_weight, interleave, max_m, *b_norm)
    M = a.numel() // K
    if M == 0:
        return (a.new_empty(a.shape), a.new_empty(a.shape), *empty_quantized_activation(a))
    args = (a, w, eps, w_offset, cast_before_weight, interleave, matvec_reads(M, max_m), b)
    args += (b_norm if b_w is not None else None,)
    instead = "the pure-torch add, RMSNorm and quantization (the same formulas)"
    return kernel_or_reference(
        "add_rmsnorm_quantize_act", _rmsnorm_quantize_kernel, _rmsnorm_quantize_reference, *args, instead=instead
    )


def _rmsnorm_quantize_kernel(
    h: Tensor,
    w: Tensor,
    eps: float,
    w_offset: float,
    cast_before_weight: bool,
    interleave: bool,
    quant: bool,
    residual: Tensor | None = None,
    residual_norm: tuple | None = None,
) -> tuple[Tensor, ...]:
    """The kernel's outputs in the op's shapes: (y, xa...), with a residual (s, y, xa...); with
    residual_norm (w, eps, w_offset, cast_before_weight) the residual is RMS-normalized first."""
    K = h.shape[-1]
    res = None if residual is None else residual.reshape(-1, K)
    args = (h.reshape(-1, K), w, eps, w_offset, cast_before_weight, interleave, quant, res, residual_norm)
    out = norm_quant.rmsnorm_quantize(*args)
    head = tuple(t.reshape(h.shape) for t in out[: 1 + (residual is not None)])
    xa = out[len(head) :]
    if not quant:
        return (*head, *empty_quantized_activation(h))
    return (*head, *(t.reshape(shape) for t, shape in zip(xa, act_shapes(h))))


def _rmsnorm_quantize_reference(
    h, w, eps, w_offset, cast_before_weight, interleave, quant, residual=None, residual_norm=None
):  # (types: _rmsnorm_quantize_kernel's)
    """_rmsnorm_quantize_kernel's pure-torch twin (same arguments, same outputs)."""
    head = ()
    if residual is not None:
        if residual_norm is not None:
            residual = rmsnorm_reference(residual, *residual_norm)
        h = (h + residual).contiguous()
        head = (h,)
    if not quant:
        return (*head, rmsnorm_reference(h, w, eps, w_offset, cast_before_weight), *empty_quantized_activation(h))
    return (*head, *rmsnorm_quantize_act_reference(h, w, eps, w_offset, cast_before_weight, interleave))
