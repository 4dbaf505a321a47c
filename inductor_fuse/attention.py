"""torch.ops.inductor_fuse.decode_attention: masked attention over a static KV cache (decode).

    decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale, float softcap) -> Tensor
    q:    [B, Hq, S, D]   float32 / bfloat16 / float16; S: the new tokens (1 at decode, a few when
                          speculating)
    k, v: [B, Hkv, T, D]  q's dtype; T: the cache's length (max_seq_len), Hq % Hkv == 0; query head
                          h reads KV head h // (Hq // Hkv) (grouped-query attention)
    mask: bool [1|B, 1|Hq, S, T]  True where query row s may attend to position t (a causal row, a
                          sliding window); broadcast over batch and heads only
    scale > 0; softcap >= 0 (0: none)
    returns [B, Hq, S, D] in q's dtype

The math, per batch b, query head h, row s (float32):
    z_t   = scale * <q[b, h, s], k[b, h // G, t]>                      G = Hq // Hkv
    z_t   = softcap * tanh(z_t / softcap)                  when softcap > 0 (Gemma 2)
    p_t   = exp(z_t - max_t' z_t') over the t with mask[b, h, s, t], 0 elsewhere
    out   = sum_t p_t v[b, h // G, t] / sum_t p_t
A row whose mask is all False returns zeros, never NaN. (What stock F.scaled_dot_product_attention
returns there depends on its backend, NaN for some; this op defines 0, so that a padded or not yet
live row cannot spread NaN.)

K and V at positions no query row of the same batch element and KV head attends to are never part
of the result: they may hold anything (NaN, inf), as a static cache's unwritten tail does. At a
position some row attends to they must be finite: a row that does not attend there weighs it by 0,
and 0 * NaN is NaN (as in stock SDPA).

This module defines the op and what every device shares:
- default (any device without a kernel): the pure-torch `decode_attention_reference`, the oracle
  of the kernels' tests.
- CPU: `decode_attention_cpu`, stock SDPA over the part of the cache some row attends to (the
  reference where SDPA's answer differs from the op's: a softcap, a row that attends to nothing).
- fake: shape and dtype of q, with the same validation (`check_decode_attention_args`: a ValueError
  naming the problem).

    decode_attention_quantize_act(q, k, v, mask, scale, softcap, bool interleave, int max_m)
        -> (Tensor out, Tensor xq, Tensor xd, Tensor xs32, Tensor xs16)
    the op with its output quantized for the o-projection that reads it (the ``act_quant`` rule
    emits it): out as decode_attention's, and quantize_act(x, interleave, max_m)'s four tensors
    (quant/op.py) of x = out.transpose(1, 2).reshape(B, S, Hq * D), the o-projection's input, as
    one launch fewer: the CUDA kernel quantizes in the step that merges its splits. Hq * D must be a
    multiple of 32; like quantize_act, the CUDA body fills the int8 tensors only for at most max_m
    rows (B * S).
The CUDA implementation (a split-K flash-decoding Triton kernel that reads only the KV tiles the
mask reaches) is registered on this op by kernels/decode_attention.py. Registration happens at
import; nothing touches a device then.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .quant.op import (
    ACT_TILE,
    FLOAT_DTYPES,
    check_quantize_act_args,
    empty_quantized_activation,
    quantize_act_reference,
)


def check_decode_attention_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> None:
    """Validate the op's arguments (module docstring). Raises ValueError naming the problem."""
    for name, t in (("q", q), ("k", k), ("v", v), ("mask", mask)):
        if t.dim() != 4:
            raise ValueError(f"decode_attention: {name} must be 4-D, got shape {tuple(t.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"decode_attention: q must be float32, bfloat16 or float16, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"decode_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"decode_attention: mask must be bool, got {mask.dtype}")
    B, Hq, S, D = q.shape
    _, Hkv, T, _ = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"decode_attention: k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"decode_attention: k/v [B, Hkv, T, D] = {tuple(k.shape)} must match q [B, Hq, S, D] = {tuple(q.shape)} "
            "in B and D"
        )
    if min(B, Hq, S, D, Hkv, T) <= 0:
        raise ValueError(f"decode_attention: empty dimension in q {tuple(q.shape)} or k/v {tuple(k.shape)}")
    if Hq % Hkv != 0:
        raise ValueError(f"decode_attention: query heads Hq = {Hq} must be a multiple of KV heads Hkv = {Hkv}")
    mB, mH, mS, mT = mask.shape
    if mB not in (1, B) or mH not in (1, Hq) or mS != S or mT != T:
        raise ValueError(
            f"decode_attention: mask must have shape [1 or {B}, 1 or {Hq}, {S}, {T}] (B, Hq, S, T), "
            f"got {tuple(mask.shape)}"
        )
    for name, t in (("k", k), ("v", v), ("mask", mask)):
        if t.device != q.device:
            raise ValueError(f"decode_attention: {name} is on {t.device}, q on {q.device}")
    if not scale > 0:
        raise ValueError(f"decode_attention: scale must be > 0, got {scale}")
    if not softcap >= 0:
        raise ValueError(f"decode_attention: softcap must be >= 0 (0: none), got {softcap}")


def _rows_of_kv_heads(mask: Tensor, B: int, Hq: int, Hkv: int) -> Tensor:
    """The mask [1|B, 1|Hq, S, T] as the rows each KV head serves: [B, Hkv, G * S, T], its G query
    heads x S rows, head-major (h = hkv * G + g)."""
    S, T = mask.shape[-2:]
    return mask.expand(B, Hq, S, T).reshape(B, Hkv, Hq // Hkv * S, T)


def decode_attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    """The op's pure-torch body and the kernel's oracle (arguments already checked): float32 math,
    result in q.dtype. All-masked rows give zeros; K/V where no row of the group looks are not read
    into the result (module docstring)."""
    B, Hq, S, D = q.shape
    _, Hkv, T, _ = k.shape
    G = Hq // Hkv
    live = _rows_of_kv_heads(mask, B, Hq, Hkv)
    seen = live.any(dim=2)[..., None]  # [B, Hkv, T, 1]: positions some row of the group attends to
    kf = torch.where(seen, k.float(), 0.0)  # [B, Hkv, T, D]
    vf = torch.where(seen, v.float(), 0.0)
    z = (q.float().reshape(B, Hkv, G * S, D) @ kf.transpose(-1, -2)) * scale  # [B, Hkv, G*S, T]
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    z = z.masked_fill(~live, float("-inf"))
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(m == float("-inf"), 0.0, m)  # an all-masked row: every p is exp(-inf) = 0
    p = torch.exp(z - m)
    denom = p.sum(dim=-1, keepdim=True)
    out = (p @ vf) / torch.where(denom > 0, denom, 1.0)  # [B, Hkv, G*S, D]
    return out.reshape(B, Hq, S, D).to(q.dtype)


@torch.library.custom_op("inductor_fuse::decode_attention", mutates_args=())
def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    """Pure-torch reference (the default for every device); the CUDA kernel is registered by
    kernels/decode_attention.py."""
    check_decode_attention_args(q, k, v, mask, scale, softcap)
    return decode_attention_reference(q, k, v, mask, scale, softcap)


def decode_attention_cpu(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    """The op on CPU (arguments already checked): stock SDPA (its fused CPU kernel, float32) over the
    cache up to the last position any row attends to, with K and V zeroed where no row of their
    group looks (only when there is such a position before that end: a sliding window). One SDPA
    call instead of the reference's dozen ops over the whole buffer: at Gemma-3-270M's shape on a
    2-core CPU, 170 -> 90-120 us a call, its compiled decode step 18.3 -> 16.3 ms. A softcap, or a
    row that attends to nothing (SDPA gives NaN there, the op 0), runs the reference."""
    if softcap > 0 or not bool(mask.any(dim=-1).all()):
        return decode_attention_reference(q, k, v, mask, scale, softcap)
    B, Hq, S, D = q.shape
    _, Hkv, T, _ = k.shape
    end = int(mask.reshape(-1, T).any(dim=0).nonzero()[-1]) + 1  # past it no row looks
    k, v, mask = k[:, :, :end], v[:, :, :end], mask[..., :end]
    seen = _rows_of_kv_heads(mask, B, Hq, Hkv).any(dim=2)[..., None]  # as the reference's
    if not bool(seen.all()):
        k, v = torch.where(seen, k, 0.0), torch.where(seen, v, 0.0)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv
    )
    # SDPA's output follows q's layout (the model's q is [B, S, Hq, D] transposed); the op's is contiguous
    return out.to(q.dtype).contiguous()


@decode_attention.register_kernel("cpu")
def _decode_attention_cpu(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    check_decode_attention_args(q, k, v, mask, scale, softcap)
    return decode_attention_cpu(q, k, v, mask, scale, softcap)


@decode_attention.register_fake
def _decode_attention_fake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    check_decode_attention_args(q, k, v, mask, scale, softcap)
    return q.new_empty(q.shape)


def attention_rows(out: Tensor) -> Tensor:
    """The attention output [B, Hq, S, D] as its o-projection reads it: [B, S, Hq * D]."""
    B, Hq, S, D = out.shape
    return out.transpose(1, 2).reshape(B, S, Hq * D)


def check_decode_attention_quantize_act_args(q, k, v, mask, scale, softcap, interleave, max_m) -> None:
    """decode_attention's checks, and quantize_act's on the o-projection's input. Raises ValueError."""
    check_decode_attention_args(q, k, v, mask, scale, softcap)
    B, Hq, S, D = q.shape
    if (Hq * D) % ACT_TILE:
        raise ValueError(f"decode_attention_quantize_act: Hq * D = {Hq * D} must be a multiple of {ACT_TILE}")
    check_quantize_act_args(q.new_empty((0, Hq * D)), interleave, max_m)


def decode_attention_quantize_act_reference(q, k, v, mask, scale, softcap, interleave):
    """The op's pure-torch body (arguments already checked): out, then the quantization of its rows."""
    out = decode_attention_reference(q, k, v, mask, scale, softcap)
    return (out, *quantize_act_reference(attention_rows(out), interleave))


@torch.library.custom_op("inductor_fuse::decode_attention_quantize_act", mutates_args=())
def decode_attention_quantize_act(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float, interleave: bool, max_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch reference, every row quantized; the CUDA kernel: kernels/decode_attention.py."""
    check_decode_attention_quantize_act_args(q, k, v, mask, scale, softcap, interleave, max_m)
    return decode_attention_quantize_act_reference(q, k, v, mask, scale, softcap, interleave)


@decode_attention_quantize_act.register_kernel("cpu")
def _decode_attention_quantize_act_cpu(q, k, v, mask, scale, softcap, interleave, max_m):  # (types: the op's)
    check_decode_attention_quantize_act_args(q, k, v, mask, scale, softcap, interleave, max_m)
    out = decode_attention_cpu(q, k, v, mask, scale, softcap)  # decode_attention's CPU output, bit for bit
    return (out, *quantize_act_reference(attention_rows(out), interleave))


@decode_attention_quantize_act.register_fake
def _decode_attention_quantize_act_fake(q, k, v, mask, scale, softcap, interleave, max_m):  # (types: the op's)
    check_decode_attention_quantize_act_args(q, k, v, mask, scale, softcap, interleave, max_m)
    B, Hq, S, D = q.shape
    return (q.new_empty(q.shape), *empty_quantized_activation(q.new_empty((B, S, Hq * D))))
