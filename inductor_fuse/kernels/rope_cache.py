"""The CUDA implementation of torch.ops.inductor_fuse.rope_cache_write (the op: ../rope_cache.py).

One launch per decode step and layer: QK-norm, rope on q and k, and the write of k and v into the
KV cache.

    grid (B * S, Hq + 2 * Hkv); program (b * S + s, h):
      h < Hq             query head h:  x = q[b, s, h]  ->  norm, rope  ->  out[b, s, h]
      Hq <= h < Hq + Hkv key head j:    x = k[b, s, j]  ->  norm, rope  ->  kv[0, b, j, pos[s]]
      h >= Hq + Hkv      value head j:  kv[1, b, j, pos[s]] = v[b, s, j]
    a row is loaded as its two halves x1 = x[:D/2], x2 = x[D/2:], so that rope is elementwise:
        out[:D/2] = x1 cos1 - x2 sin1,   out[D/2:] = x2 cos2 + x1 sin2
    (rotate_half(x) = cat(-x2, x1)), in float32, each stored value rounded once, where the stock
    graph rounds (the norm's output to q's dtype, then the rope's).

On CUDA tensors the op runs this kernel; a kernel that cannot compile or take the call runs the
pure-torch reference instead and a WARNING says so once per error. Registration happens at import;
nothing touches a device then.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..rope_cache import check_rope_cache_write_args, rope_cache_write, rope_cache_write_reference
from ._common import gdc_launch_dependents, gdc_wait, interpreting, kernel_or_reference, pdl, pdl_early, pdl_launch


@triton.jit
def _normed_half_pair(x1, x2, w_ptr, half, hmask, eps, w_offset, D: tl.constexpr, CAST_FIRST: tl.constexpr):
    """x1, x2 (float32 halves of one row) after the RMSNorm, in float32 (the caller rounds them
    to the row dtype; CAST_FIRST rounds the normalized value before the weight, as its graph does)."""
    ms = (tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / D
    r = tl.math.rsqrt(ms + eps)
    w1 = tl.load(w_ptr + half, mask=hmask, other=0.0)
    w2 = tl.load(w_ptr + D // 2 + half, mask=hmask, other=0.0)
    if CAST_FIRST:  # dtype(dtype(n) * w): the weight in the row dtype
        y1 = (x1 * r).to(w_ptr.dtype.element_ty).to(tl.float32) * w1.to(tl.float32)
        y2 = (x2 * r).to(w_ptr.dtype.element_ty).to(tl.float32) * w2.to(tl.float32)
    else:
        y1 = x1 * r * (w1.to(tl.float32) + w_offset)
        y2 = x2 * r * (w2.to(tl.float32) + w_offset)
    return y1, y2


@triton.jit
def _rope_cache_kernel(
    q_ptr,  # [B, S, Hq, D]
    k_ptr,
    v_ptr,  # [B, S, Hkv, D]
    cos_ptr,
    sin_ptr,  # [1|B, S, 1, D], float
    qw_ptr,
    kw_ptr,  # [D] (HAS_NORM)
    kv_ptr,  # [2, B, Hkv, T, D]
    pos_ptr,  # int [S]
    out_ptr,  # [B, S, Hq, D] contiguous
    S,
    Hq,
    Hkv,
    eps,
    w_offset,
    sqb,
    sqs,
    sqh,
    skb,
    sks,
    skh,
    svb,
    svs,
    svh,
    scb,
    scs,
    ssb,
    sss,
    skv2,
    skvb,
    skvh,
    skvt,
    D: tl.constexpr,
    HALF: tl.constexpr,  # D // 2 rounded up to a power of two
    HAS_NORM: tl.constexpr,
    CAST_FIRST: tl.constexpr,
    PDL: tl.constexpr = False,  # _common.pdl(): wait for the kernel before it
    PDL_EARLY: tl.constexpr = False,  # _common.pdl_early(): then let the attention's split kernel start
):
    if PDL:
        gdc_wait()
        if PDL_EARLY:
            gdc_launch_dependents()
    row = tl.program_id(0)
    h = tl.program_id(1)
    b = (row // S).to(tl.int64)
    s = row % S
    half = tl.arange(0, HALF)
    hmask = half < D // 2
    t = tl.load(pos_ptr + s).to(tl.int64)
    if h >= Hq + Hkv:  # a value head: copied into the cache
        j = h - Hq - Hkv
        v_src = v_ptr + b * svb + s * svs + j * svh
        v_dst = kv_ptr + skv2 + b * skvb + j * skvh + t * skvt
        v1 = tl.load(v_src + half, mask=hmask)
        v2 = tl.load(v_src + D // 2 + half, mask=hmask)
        tl.store(v_dst + half, v1.to(kv_ptr.dtype.element_ty), mask=hmask)
        tl.store(v_dst + D // 2 + half, v2.to(kv_ptr.dtype.element_ty), mask=hmask)
    else:
        if h < Hq:
            src = q_ptr + b * sqb + s * sqs + h * sqh
            w_ptr = qw_ptr
        else:
            src = k_ptr + b * skb + s * sks + (h - Hq) * skh
            w_ptr = kw_ptr
        x1 = tl.load(src + half, mask=hmask, other=0.0)
        x2 = tl.load(src + D // 2 + half, mask=hmask, other=0.0)
        dtype = x1.dtype
        x1 = x1.to(tl.float32)
        x2 = x2.to(tl.float32)
        if HAS_NORM:
            x1, x2 = _normed_half_pair(x1, x2, w_ptr, half, hmask, eps, w_offset, D, CAST_FIRST)
            x1 = x1.to(dtype).to(tl.float32)  # the norm's output in the row dtype, as rope reads it
            x2 = x2.to(dtype).to(tl.float32)
        c = cos_ptr + b * scb + s * scs
        sn = sin_ptr + b * ssb + s * sss
        c1 = tl.load(c + half, mask=hmask, other=0.0).to(tl.float32)
        c2 = tl.load(c + D // 2 + half, mask=hmask, other=0.0).to(tl.float32)
        s1 = tl.load(sn + half, mask=hmask, other=0.0).to(tl.float32)
        s2 = tl.load(sn + D // 2 + half, mask=hmask, other=0.0).to(tl.float32)
        o1 = x1 * c1 + (-x2) * s1
        o2 = x2 * c2 + x1 * s2
        if h < Hq:  # (each branch stores its own dtype: a value may not change type across branches)
            q_dst = out_ptr + ((b * S + s) * Hq + h) * D
            tl.store(q_dst + half, o1.to(dtype), mask=hmask)
            tl.store(q_dst + D // 2 + half, o2.to(dtype), mask=hmask)
        else:
            k_dst = kv_ptr + b * skvb + (h - Hq) * skvh + t * skvt
            tl.store(k_dst + half, o1.to(dtype).to(kv_ptr.dtype.element_ty), mask=hmask)
            tl.store(k_dst + D // 2 + half, o2.to(dtype).to(kv_ptr.dtype.element_ty), mask=hmask)


def rope_cache_write_cuda(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos) -> Tensor:
    """The kernel's launcher (arguments already validated; CPU tensors under TRITON_INTERPRET=1)."""
    if not (q.is_cuda or interpreting()):
        raise ValueError(f"rope_cache_write kernel: needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
    B, S, Hq, D = q.shape
    Hkv = k.shape[2]
    q, k, v, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, cos, sin))
    if kv.stride(-1) != 1:
        raise ValueError("rope_cache_write kernel: the cache's last dim must be contiguous")
    out = torch.empty((B, S, Hq, D), dtype=q.dtype, device=q.device)
    has_norm = q_w is not None
    if has_norm:
        q_w, k_w = q_w.contiguous(), k_w.contiguous()
    cb = 0 if cos.shape[0] == 1 else cos.stride(0)
    sb = 0 if sin.shape[0] == 1 else sin.stride(0)
    _rope_cache_kernel[(B * S, Hq + 2 * Hkv)](
        q,
        k,
        v,
        cos,
        sin,
        q_w if has_norm else q,
        k_w if has_norm else q,
        kv,
        pos,
        out,
        S,
        Hq,
        Hkv,
        float(eps),
        float(w_offset),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        cb,
        cos.stride(1),
        sb,
        sin.stride(1),
        kv.stride(0),
        kv.stride(1),
        kv.stride(2),
        kv.stride(3),
        D=D,
        HALF=triton.next_power_of_2(D // 2),
        HAS_NORM=has_norm,
        CAST_FIRST=bool(cast_before_weight),
        PDL=pdl(q.device),
        PDL_EARLY=pdl_early(q.device),
        num_warps=1 if D <= 128 else 2,
        **pdl_launch(q.device),
    )
    return out


@rope_cache_write.register_kernel("cuda")
def _rope_cache_write_cuda(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos):  # (types: op)
    args = (q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_before_weight, kv, pos)
    check_rope_cache_write_args(*args)
    # a kernel that cannot compile or take the call: the reference (it writes kv the same), one WARNING
    return kernel_or_reference("rope_cache_write", rope_cache_write_cuda, rope_cache_write_reference, *args)
