"""torch.ops.inductor_fuse.rope_cache_write: the decode step's QK-norm, rope and KV-cache write.

    rope_cache_write(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor? q_w, Tensor? k_w,
                     float eps, float w_offset, bool cast_before_weight, Tensor(a!) kv, Tensor pos)
        -> Tensor
    q:        [B, S, Hq, D]   float32 / bfloat16 / float16, D even; the new tokens' query heads
    k, v:     [B, S, Hkv, D]  q's dtype
    cos, sin: [1|B, S, 1, D]  float (any float dtype, used in float32), rotate-half layout: the
                              angles of column i and i + D/2 are equal
    q_w, k_w: [D] or both None: the QK-norm's weights (Qwen3, Gemma 3), q's dtype or float32
    kv:       [2, B, Hkv, T, D]  the layer's K and V cache (kv[0] K, kv[1] V), written in place
    pos:      int [S]  the cache positions of the new tokens (distinct, in [0, T))
    returns   [B, S, Hq, D] in q's dtype: the query after its norm and rope

The math, each row x of q and k (float32, the arithmetic of models/transformer.py's RMSNorm and
apply_rope, which the ``rope_cache`` rule matches):
    with a norm (w = q_w for q, k_w for k):
        n = x * rsqrt(mean(x^2) + eps)
        x = dtype(dtype(n) * w)               cast_before_weight (LlamaRMSNorm's order)
        x = dtype(n * (float(w) + w_offset))  otherwise (w_offset: 1 for a Gemma weight stored as w - 1)
    rope:  x = dtype(x * cos + rotate_half(x) * sin),  rotate_half(x) = cat(-x[D/2:], x[:D/2])
and then
    kv[0, b, :, pos[s]] = k'[b, s]   kv[1, b, :, pos[s]] = v[b, s]   (cast to kv's dtype)
One launch where the stock graph has up to four (each norm's reduction, each rope, the cache
write); the attention that follows reads the cache this op wrote.

This module defines the op and what every device shares:
- default (CPU, any device without a kernel): the pure-torch `rope_cache_write_reference`.
- fake: q's shape and dtype, with the same validation (`check_rope_cache_write_args`: a ValueError
  naming the problem).
The CUDA implementation (one Triton program per token and head) is registered on this op by
kernels/rope_cache.py. Registration happens at import; nothing touches a device then.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .quant.op import FLOAT_DTYPES


def check_rope_cache_write_args(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos) -> None:
    """Validate the op's arguments (module docstring). Raises ValueError naming the problem."""
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        if t.dim() != 4:
            raise ValueError(f"rope_cache_write: {name} must be 4-D, got shape {tuple(t.shape)}")
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"rope_cache_write: q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, S, Hq, D = q.shape
    if D % 2 or min(B, S, Hq, D) <= 0:
        raise ValueError(f"rope_cache_write: q [B, S, Hq, D] = {tuple(q.shape)} needs an even D and no empty dim")
    if k.shape[:2] != (B, S) or k.shape[3] != D or tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            f"rope_cache_write: k and v must be [B, S, Hkv, D] = [{B}, {S}, Hkv, {D}] alike, "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype not in FLOAT_DTYPES or t.shape[0] not in (1, B) or t.shape[1:] != (S, 1, D):
            raise ValueError(
                f"rope_cache_write: {name} must be a float [1 or {B}, {S}, 1, {D}] tensor, "
                f"got {t.dtype} {tuple(t.shape)}"
            )
    if (q_w is None) != (k_w is None):
        raise ValueError("rope_cache_write: q_w and k_w must both be given (QK-norm) or both be None")
    for name, w in (("q_w", q_w), ("k_w", k_w)):
        if w is not None and (tuple(w.shape) != (D,) or w.dtype not in (q.dtype, torch.float32)):
            raise ValueError(
                f"rope_cache_write: {name} must be a [{D}] {q.dtype} or float32 vector, got {w.dtype} {tuple(w.shape)}"
            )
    if q_w is not None and q_w.dtype != k_w.dtype:
        raise ValueError(f"rope_cache_write: q_w and k_w must share one dtype, got {q_w.dtype} and {k_w.dtype}")
    if cast_before_weight and q_w is not None and (q_w.dtype != q.dtype or k_w.dtype != q.dtype):
        raise ValueError("rope_cache_write: cast_before_weight needs q_w and k_w in q's dtype")
    Hkv = k.shape[2]
    if kv.dim() != 5 or kv.shape[:3] != (2, B, Hkv) or kv.shape[4] != D or kv.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"rope_cache_write: kv must be a float [2, {B}, {Hkv}, T, {D}] cache, got {kv.dtype} {tuple(kv.shape)}"
        )
    if pos.dim() != 1 or pos.shape[0] != S or pos.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rope_cache_write: pos must be an int [{S}] tensor, got {pos.dtype} {tuple(pos.shape)}")
    for name, t in (("k", k), ("v", v), ("cos", cos), ("sin", sin), ("kv", kv), ("pos", pos)):
        if t.device != q.device:
            raise ValueError(f"rope_cache_write: {name} is on {t.device}, q on {q.device}")
    if not eps >= 0:
        raise ValueError(f"rope_cache_write: eps must be >= 0, got {eps}")


def _norm(x: Tensor, w: Tensor | None, eps: float, w_offset: float, cast_before_weight: bool) -> Tensor:
    if w is None:
        return x
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if cast_before_weight:
        return n.to(x.dtype) * w
    return (n * (w.float() + w_offset)).to(x.dtype)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos.float() + torch.cat([-x2, x1], dim=-1) * sin.float()).to(x.dtype)


def rope_cache_write_reference(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos) -> Tensor:
    """The op's pure-torch body and the kernel's oracle (arguments already checked): writes kv, returns q'."""
    q = _rope(_norm(q, q_w, eps, w_offset, cast_before_weight), cos, sin)
    k = _rope(_norm(k, k_w, eps, w_offset, cast_before_weight), cos, sin)
    kv[:, :, :, pos] = torch.stack([k, v]).transpose(2, 3).to(kv.dtype)  # [2, B, Hkv, S, D] at positions pos
    return q


# flexible_layout: Inductor passes each input in the layout it has (the kernel takes strides). With
# the default constraint it copied cos and sin into a buffer of their traced strides at every
# layer's call (a launch per layer on the GPU), though every layer reads the same values.
@torch.library.custom_op("inductor_fuse::rope_cache_write", mutates_args=("kv",), tags=(torch.Tag.flexible_layout,))
def rope_cache_write(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cos: Tensor,
    sin: Tensor,
    q_w: Tensor | None,
    k_w: Tensor | None,
    eps: float,
    w_offset: float,
    cast_before_weight: bool,
    kv: Tensor,
    pos: Tensor,
) -> Tensor:
    """Pure-torch reference (the default for every device); the CUDA kernel is registered by
    kernels/rope_cache.py."""
    args = (q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos)
    check_rope_cache_write_args(*args)
    return rope_cache_write_reference(*args)


@rope_cache_write.register_fake
def _rope_cache_write_fake(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos):  # (types: op)
    check_rope_cache_write_args(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos)
    return torch.empty_like(q, memory_format=torch.contiguous_format)
