"""torch.ops.inductor_fuse.qlinear: the quantized linear every pattern and QuantizedLinear calls,
and torch.ops.inductor_fuse.glu_qlinear, the gate|up linear of a GLU with its activation and product.

    qlinear(Tensor x, Tensor[] planes, Tensor? bias, str fmt) -> Tensor
    x: [..., K] float (fp32 / bf16 / fp16); planes: the format's planes of a weight [N, K]
    (docs/design.md contract); bias: [N] or None; returns [..., N] in x.dtype.

    glu_qlinear(Tensor x, Tensor[] planes, Tensor? bias, str fmt, str act) -> Tensor
    planes: a weight [2I, K] whose rows interleave gate and up (row 2i: gate row i, row 2i + 1: up
    row i), bias [2I] likewise; with y = x W^T + b in float32:
    returns act(y[..., 0::2]) * y[..., 1::2], [..., I] in x.dtype; act: "silu" or "gelu_tanh".

    quantize_act(Tensor x, bool interleave, int max_m) -> (Tensor xq, Tensor xd, Tensor xs32, Tensor xs16)
    the int8 activation the W4A8 matvecs read, once per activation (the ``act_quant`` rule): x
    [..., K] float, K % 32 == 0 -> xq int32 [..., K/4] (4 int8 per word), xd / xs32 float32
    [..., K/32], xs16 float32 [..., K/16] (per row, per 32-wide K tile: scale, sums; layout below).
    qlinear_q8(x, planes, bias, fmt, xa, interleave, max_m) and glu_qlinear_q8(x, planes, bias, fmt,
    act, xa, interleave, max_m): qlinear and glu_qlinear with xa = quantize_act(x, interleave,
    max_m)'s four tensors passed along, with the two arguments that made them; same results as
    the ops without xa (the CPU body ignores xa; the CUDA matvec reads it instead of quantizing x
    again, when x has at most max_m rows -- quantize_act filled it only then -- and after checking
    that interleave is the layout the format's matvec reads; the GEMM paths read x).

    rmsnorm_quantize_act(Tensor h, Tensor w, float eps, float w_offset, bool cast_before_weight,
                         bool interleave, int max_m) -> (Tensor y, Tensor xq, Tensor xd, Tensor xs32, Tensor xs16)
    quantize_act fused into its producer, an RMSNorm of h [..., K] over K (float32 math): y as the
    matched graph computes it (``rmsnorm_reference``; the ``act_quant`` rule emits the op) and
    quantize_act(y, interleave, max_m)'s four tensors.

    add_rmsnorm_quantize_act(Tensor a, Tensor b, Tensor w, float eps, float w_offset,
                             bool cast_before_weight, bool interleave, int max_m)
        -> (Tensor s, Tensor y, Tensor xq, Tensor xd, Tensor xs32, Tensor xs16)
    the same with the residual add before the norm: s = a + b (a's dtype, as aten's add), then
    rmsnorm_quantize_act(s, ...)'s five outputs; s also goes on (the residual stream).

    glu_qlinear_q8_quantize_act(x, planes, bias, fmt, act, xa, interleave, max_m, out_interleave, out_max_m)
        -> (Tensor y, Tensor yq, Tensor yd, Tensor ys32, Tensor ys16)
    glu_qlinear_q8 and quantize_act(y, out_interleave, out_max_m) of its output in one op: the
    quantization fused into its producer, the GLU (the ``act_quant`` rule emits it where the
    GLU's output is a quantized linear's activation: the down projection).

This module defines the ops and what every device shares:
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

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the ops take as activations


def check_qlinear_args(x: Tensor, planes: Sequence[Tensor], bias: Tensor | None, fmt: str) -> tuple[int, int]:
    """Validate the op's arguments; returns (N, K). Raises ValueError naming the problem."""
    if fmt not in FORMATS:
        raise ValueError(f"qlinear: unknown format {fmt!r}; known: {sorted(FORMATS)}")
    f = FORMATS[fmt]
    if x.dtype not in FLOAT_DTYPES:
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
        if bias.dtype not in FLOAT_DTYPES:
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


@torch.library.custom_op("inductor_fuse::weight_codes", mutates_args=())
def weight_codes(planes: list[Tensor], fmt: str, part: int) -> Tensor:
    """Part ``part`` of ``FORMATS[fmt].codes(planes)``: 0 the int8 codes [N, K], 1 the float32
    scales [N, K / group], 2 the float32 offsets (a format with ``code_offset``).

    What the ``dequant_cpu`` rule reads a one-row matvec's weight from on CPU: freezing folds it
    into a constant, computed once at compile time."""
    t = FORMATS[fmt].codes(planes)[part]
    return t.clone() if any(t is p for p in planes) else t  # a custom op's output cannot alias an input


@weight_codes.register_fake
def _weight_codes_fake(planes: list[Tensor], fmt: str, part: int) -> Tensor:
    f = FORMATS[fmt]
    n, k = f.check_planes(planes)[1:]
    if f.code_group is None or part not in ((0, 1, 2) if f.code_offset else (0, 1)):
        raise ValueError(f"weight_codes: {fmt} has no code part {part}")
    if part == 0:
        return planes[0].new_empty((n, k), dtype=torch.int8)
    return planes[0].new_empty((n, k // f.code_group), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# The quantized activation (W4A8), once per activation: quantize_act and its consumers.
#   d[m,g]   = max_l |x[m, 32g+l]| / 127                  (float32; 0 for an all-zero tile)
#   q[m,k]   = round_half_away(x[m,k] * (127 / amax))     int8 in [-127, 127]
#   s16[m,h] = d[m, h//2] * sum_{l<16} q[m, 16h+l]
#   s32[m,g] = s16[m,2g] + s16[m,2g+1]
# interleave=True stores element l of each 32-tile at (l%2)*16 + (l//8)*4 + (l%8)//2 (the int4_g*
# matvec's layout). The same float32 operations, in the same order, as kernels/_common.py's
# _act_quant_kernel: bit-identical buffers (tests/kernels/test_act_quant.py).
# ---------------------------------------------------------------------------------------------

ACT_TILE = 32
_LANE = torch.arange(ACT_TILE)
_INTERLEAVE_DST = (_LANE % 2) * 16 + (_LANE // 8) * 4 + (_LANE % 8) // 2  # where element l is stored
_INTERLEAVE_SRC = torch.argsort(_INTERLEAVE_DST)  # which element position j holds


def check_quantize_act_args(x: Tensor, interleave: bool, max_m: int) -> int:
    """Validate quantize_act's arguments; returns K. Raises ValueError naming the problem."""
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"quantize_act: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("quantize_act: x must have at least one dimension [..., K]")
    K = x.shape[-1]
    if K <= 0 or K % ACT_TILE != 0:
        raise ValueError(f"quantize_act: K = x.shape[-1] = {K} must be a positive multiple of {ACT_TILE}")
    if max_m < 0:
        raise ValueError(f"quantize_act: max_m must be >= 0, got {max_m}")
    return K


def act_shapes(x: Tensor) -> list[tuple]:
    """The shapes of quantize_act(x)'s four tensors (a function of x's shape alone)."""
    lead, K = tuple(x.shape[:-1]), x.shape[-1]
    return [(*lead, K // 4), (*lead, K // ACT_TILE), (*lead, K // ACT_TILE), (*lead, K // 16)]


ACT_DTYPES = (torch.int32, torch.float32, torch.float32, torch.float32)  # of xq, xd, xs32, xs16


def empty_quantized_activation(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialized tensors of quantize_act(x)'s shapes and dtypes."""
    return tuple(x.new_empty(shape, dtype=dt) for shape, dt in zip(act_shapes(x), ACT_DTYPES))


def quantize_act_reference(x: Tensor, interleave: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """quantize_act's pure-torch body (arguments already checked): (xq, xd, xs32, xs16)."""
    K = x.shape[-1]
    G = K // ACT_TILE
    M = x.numel() // K
    xg = x.reshape(M, G, ACT_TILE).float()
    amax = xg.abs().amax(-1)  # [M, G]
    d = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, 0.0)
    v = xg * inv[..., None]
    q = (v + torch.where(v >= 0, 0.5, -0.5)).to(torch.int32)  # truncation: round half away from zero
    q = q.clamp(-127, 127)
    s_lo = q[..., :16].sum(-1).float() * d
    s_hi = q[..., 16:].sum(-1).float() * d
    xs32 = s_lo + s_hi
    xs16 = torch.stack([s_lo, s_hi], -1).reshape(M, 2 * G)
    q8 = q.to(torch.int8)
    if interleave:
        q8 = q8[..., _INTERLEAVE_SRC.to(x.device)]
    xq = q8.reshape(M, K).contiguous().view(torch.int32)
    return tuple(t.reshape(shape) for t, shape in zip((xq, d, xs32, xs16), act_shapes(x)))


@torch.library.custom_op("inductor_fuse::quantize_act", mutates_args=())
def quantize_act(x: Tensor, interleave: bool, max_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch reference (every device without a kernel), every row computed. The CUDA kernel
    (kernels/ops.py) computes nothing when x has more than ``max_m`` rows: the consumers' GEMM
    paths read x then, not the int8 activation (the act_quant rule passes the largest
    matvec_max_m of the consumers' formats)."""
    check_quantize_act_args(x, interleave, max_m)
    return quantize_act_reference(x, interleave)


@quantize_act.register_fake
def _quantize_act_fake(x: Tensor, interleave: bool, max_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_quantize_act_args(x, interleave, max_m)
    return empty_quantized_activation(x)


def _same(a, b) -> bool:
    """Dimension equality where both are known integers (symbolic ones: not compared, no guard)."""
    return not (isinstance(a, int) and isinstance(b, int)) or a == b


def check_quantized_activation(x: Tensor, xa: Sequence[Tensor]) -> None:
    """xa is quantize_act(x)'s four tensors (shapes, dtypes, device). Raises ValueError."""
    names = ("xq", "xd", "xs32", "xs16")
    if len(xa) != len(names):
        raise ValueError(f"quantized activation: expected 4 tensors {list(names)}, got {len(xa)}")
    for name, t, shape, dt in zip(names, xa, act_shapes(x), ACT_DTYPES):
        if t.dtype != dt or t.dim() != len(shape) or not all(_same(a, b) for a, b in zip(t.shape, shape)):
            raise ValueError(
                f"quantized activation: {name} must be {dt} of shape {list(shape)} for x {list(x.shape)}, "
                f"got {t.dtype} {list(t.shape)}"
            )
        if t.device != x.device:
            raise ValueError(f"quantized activation: {name} is on {t.device}, x on {x.device}")


@torch.library.custom_op("inductor_fuse::qlinear_q8", mutates_args=())
def qlinear_q8(
    x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa: list[Tensor], interleave: bool, max_m: int
) -> Tensor:
    """qlinear with the quantized activation xa = quantize_act(x, interleave, max_m) given: the
    pure-torch reference on x (xa is what the CUDA matvec reads, kernels/ops.py)."""
    check_qlinear_args(x, planes, bias, fmt)
    check_quantized_activation(x, xa)
    return dequantize_linear(x, planes, bias, fmt)


@qlinear_q8.register_fake
def _qlinear_q8_fake(
    x: Tensor, planes: list[Tensor], bias: Tensor | None, fmt: str, xa: list[Tensor], interleave: bool, max_m: int
) -> Tensor:
    N, _ = check_qlinear_args(x, planes, bias, fmt)
    check_quantized_activation(x, xa)
    return x.new_empty((*x.shape[:-1], N))


@torch.library.custom_op("inductor_fuse::glu_qlinear_q8", mutates_args=())
def glu_qlinear_q8(
    x: Tensor,
    planes: list[Tensor],
    bias: Tensor | None,
    fmt: str,
    act: str,
    xa: list[Tensor],
    interleave: bool,
    max_m: int,
) -> Tensor:
    """glu_qlinear with the quantized activation given (as qlinear_q8)."""
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    check_quantized_activation(x, xa)
    return glu_qlinear_reference(x, planes, bias, fmt, act)


@glu_qlinear_q8.register_fake
def _glu_qlinear_q8_fake(x, planes, bias, fmt, act, xa, interleave, max_m) -> Tensor:  # (types: the op's)
    inter = check_glu_qlinear_args(x, planes, bias, fmt, act)
    check_quantized_activation(x, xa)
    return x.new_empty((*x.shape[:-1], inter))


@torch.library.custom_op("inductor_fuse::glu_qlinear_q8_quantize_act", mutates_args=())
def glu_qlinear_q8_quantize_act(
    x: Tensor,
    planes: list[Tensor],
    bias: Tensor | None,
    fmt: str,
    act: str,
    xa: list[Tensor],
    interleave: bool,
    max_m: int,
    out_interleave: bool,
    out_max_m: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """glu_qlinear_q8, and quantize_act of its output (out_interleave, out_max_m): the pure-torch
    reference, every row quantized (the CUDA body quantizes only when y has at most out_max_m
    rows, as quantize_act)."""
    check_glu_qlinear_args(x, planes, bias, fmt, act)
    check_quantized_activation(x, xa)
    y = glu_qlinear_reference(x, planes, bias, fmt, act)
    check_quantize_act_args(y, out_interleave, out_max_m)
    return (y, *quantize_act_reference(y, out_interleave))


@glu_qlinear_q8_quantize_act.register_fake
def _glu_qlinear_q8_quantize_act_fake(
    x, planes, bias, fmt, act, xa, interleave, max_m, out_interleave, out_max_m
):  # (types: the op's)
    y = _glu_qlinear_q8_fake(x, planes, bias, fmt, act, xa, interleave, max_m)
    check_quantize_act_args(y, out_interleave, out_max_m)
    return (y, *empty_quantized_activation(y))


# ---------------------------------------------------------------------------------------------
# The quantized activation fused into its producer, an RMSNorm (the ``act_quant`` rule):
#   rmsnorm_quantize_act(h, w, eps, w_offset, cast_before_weight, interleave, max_m)
#       -> (y, xq, xd, xs32, xs16)
# y is the RMSNorm of h [..., K] over its last dim, as the matched graph computes it (float32 math):
#   n = h32 * rsqrt(mean(h32^2, -1) + eps)
#   cast_before_weight:  y = n.to(h.dtype) * w                      (transformers' LlamaRMSNorm)
#   else:                y = (n * (w.float() + w_offset)).to(h.dtype)  (models/transformer.py: 0,
#                                                                    Gemma3RMSNorm: 1.0)
# and (xq, xd, xs32, xs16) = quantize_act(y, interleave, max_m), y's stored values quantized.
# ---------------------------------------------------------------------------------------------


def check_rmsnorm_quantize_act_args(
    h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool, interleave: bool, max_m: int
) -> int:
    """Validate rmsnorm_quantize_act's arguments; returns K. Raises ValueError naming the problem."""
    if h.dtype not in FLOAT_DTYPES:
        raise ValueError(f"rmsnorm_quantize_act: h must be float32, bfloat16 or float16, got {h.dtype}")
    K = check_quantize_act_args(h, interleave, max_m)
    if w.dim() != 1 or not _same(w.shape[0], K):
        raise ValueError(f"rmsnorm_quantize_act: w must have shape [{K}] (K = h.shape[-1]), got {list(w.shape)}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"rmsnorm_quantize_act: w must be floating point, got {w.dtype}")
    if cast_before_weight and w.dtype != h.dtype:
        raise ValueError(f"rmsnorm_quantize_act: cast_before_weight needs w in h's dtype {h.dtype}, got {w.dtype}")
    if cast_before_weight and w_offset != 0:
        raise ValueError("rmsnorm_quantize_act: cast_before_weight takes no w_offset")
    if w.device != h.device:
        raise ValueError(f"rmsnorm_quantize_act: w is on {w.device}, h on {h.device}")
    return K


def rmsnorm_reference(h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool) -> Tensor:
    """The RMSNorm as the matched graph computes it: its aten ops, in its order (also what
    dequant_cpu puts back when nothing reads the int8 activation)."""
    h32 = h.float()
    n = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
    if cast_before_weight:
        return (n.to(h.dtype) * w).contiguous()  # contiguous: the fake's strides, whatever h's are
    w32 = w.float()
    if w_offset:
        w32 = w32 + w_offset
    return (n * w32).to(h.dtype).contiguous()


def rmsnorm_quantize_act_reference(
    h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool, interleave: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """rmsnorm_quantize_act's pure-torch body (arguments already checked): y and quantize_act(y)."""
    y = rmsnorm_reference(h, w, eps, w_offset, cast_before_weight)
    return (y, *quantize_act_reference(y, interleave))


@torch.library.custom_op("inductor_fuse::rmsnorm_quantize_act", mutates_args=())
def rmsnorm_quantize_act(
    h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool, interleave: bool, max_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch reference (every device without a kernel), every row quantized. The CUDA kernel
    (kernels/ops.py) computes only y when h has more than ``max_m`` rows (as quantize_act)."""
    check_rmsnorm_quantize_act_args(h, w, eps, w_offset, cast_before_weight, interleave, max_m)
    return rmsnorm_quantize_act_reference(h, w, eps, w_offset, cast_before_weight, interleave)


@rmsnorm_quantize_act.register_fake
def _rmsnorm_quantize_act_fake(
    h: Tensor, w: Tensor, eps: float, w_offset: float, cast_before_weight: bool, interleave: bool, max_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_rmsnorm_quantize_act_args(h, w, eps, w_offset, cast_before_weight, interleave, max_m)
    return (torch.empty_like(h, memory_format=torch.contiguous_format), *empty_quantized_activation(h))


# The residual add before the norm, fused too (the ``act_quant`` rule, when h = add(a, b)):
#   add_rmsnorm_quantize_act(a, b, w, eps, w_offset, cast_before_weight, interleave, max_m)
#       -> (s, y, xq, xd, xs32, xs16),  s = a + b,  the rest rmsnorm_quantize_act(s, ...)
# and, when b is itself an RMSNorm's output (Gemma 3's sandwich norms: x + post_norm(o)), that norm
# too, given by four trailing arguments (b_w None: no norm of b):
#   add_rmsnorm_quantize_act(a, b, w, ..., max_m, b_w, b_eps, b_w_offset, b_cast_before_weight)
#       -> s = a + rmsnorm_reference(b, b_w, b_eps, b_w_offset, b_cast_before_weight), the rest as above


def check_add_rmsnorm_quantize_act_args(
    a: Tensor,
    b: Tensor,
    w: Tensor,
    eps: float,
    w_offset: float,
    cast_before_weight: bool,
    interleave: bool,
    max_m: int,
    b_w: Tensor | None = None,
    b_eps: float = 0.0,
    b_w_offset: float = 0.0,
    b_cast_before_weight: bool = False,
) -> int:
    """Validate add_rmsnorm_quantize_act's arguments; returns K. Raises ValueError naming the problem."""
    if b.dtype != a.dtype or b.device != a.device or b.dim() != a.dim() or not all(map(_same, b.shape, a.shape)):
        raise ValueError(
            f"add_rmsnorm_quantize_act: b must be a's shape {list(a.shape)}, dtype {a.dtype} and device {a.device}, "
            f"got {list(b.shape)} {b.dtype} on {b.device}"
        )
    if b_w is not None:
        try:
            check_rmsnorm_quantize_act_args(b, b_w, b_eps, b_w_offset, b_cast_before_weight, interleave, max_m)
        except ValueError as e:
            raise ValueError(f"add_rmsnorm_quantize_act: b's norm: {e}") from None
    return check_rmsnorm_quantize_act_args(a, w, eps, w_offset, cast_before_weight, interleave, max_m)


@torch.library.custom_op("inductor_fuse::add_rmsnorm_quantize_act", mutates_args=())
def add_rmsnorm_quantize_act(
    a: Tensor,
    b: Tensor,
    w: Tensor,
    eps: float,
    w_offset: float,
    cast_before_weight: bool,
    interleave: bool,
    max_m: int,
    b_w: Tensor | None = None,
    b_eps: float = 0.0,
    b_w_offset: float = 0.0,
    b_cast_before_weight: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch reference: s = a + b (b RMS-normalized first when b_w is given), then
    rmsnorm_quantize_act's body on s."""
    args = (a, b, w, eps, w_offset, cast_before_weight, interleave, max_m, b_w, b_eps, b_w_offset, b_cast_before_weight)
    check_add_rmsnorm_quantize_act_args(*args)
    if b_w is not None:
        b = rmsnorm_reference(b, b_w, b_eps, b_w_offset, b_cast_before_weight)
    s = (a + b).contiguous()
    return (s, *rmsnorm_quantize_act_reference(s, w, eps, w_offset, cast_before_weight, interleave))


@add_rmsnorm_quantize_act.register_fake
def _add_rmsnorm_quantize_act_fake(
    a, b, w, eps, w_offset, cast_before_weight, interleave, max_m, b_w=None, b_eps=0.0, b_w_offset=0.0, b_cast=False
):  # (types: the op's)
    args = (a, b, w, eps, w_offset, cast_before_weight, interleave, max_m, b_w, b_eps, b_w_offset, b_cast)
    check_add_rmsnorm_quantize_act_args(*args)
    s = torch.empty_like(a, memory_format=torch.contiguous_format)
    return (s, torch.empty_like(s), *empty_quantized_activation(a))
