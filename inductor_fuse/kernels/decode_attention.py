"""The CUDA implementation of torch.ops.inductor_fuse.decode_attention (the op: inductor_fuse/attention.py).

Split-K flash decoding over a static KV cache that reads only the KV tiles the mask reaches.

    grid (B * Hkv, num_splits, row blocks); program (b * Hkv + j, split, rb):
      rows    the G * S query rows of KV head j (G = Hq // Hkv query heads x S new tokens; row
              r = g * S + s is query head j * G + g, token s), BLOCK_R of them (block rb), padded
              to a power of two >= 16 so that both products are tl.dot
      split   the buffer's BLOCK_T-position tiles are dealt to the splits in turn: split s holds
              tiles s, s + num_splits, s + 2 num_splits, .. (at most TILES of them), so that any
              live range, 1k or 32k, spreads evenly over every split. The split's whole mask is
              loaded at once (one row when all rows share it, MASK_ROWS off); from it the range
              [i_lo, i_hi) of its tiles that some row attends to. No such tile: the program
              writes (m, l, acc) = (-inf, 0, 0) and ends. Else the range is walked without a
              branch (so the loads pipeline, num_stages): the tile's mask, K, and V (V only where
              some row attends: garbage past the live length may be NaN, and 0 x NaN = NaN) and
                  z   = scale * q k^T                        [BLOCK_R, BLOCK_T], float32
                  z   = softcap * tanh(z / softcap)          (HAS_SOFTCAP)
                  z   = log2(e) z where the mask is True, -inf elsewhere
                  m'  = max(m, rowmax z);  a = 2^(m - m');  p = 2^(z - m')   (0 where masked)
                  l   = a l + rowsum p;   acc = a acc + p v;   m = m'
              (m' = -inf, no True yet in the row: subtracted as 0, so p = a = 0, never NaN)
    one split: out = acc / l straight from the kernel (0 where l = 0: a row that saw no True);
    several: (acc, m, l) per split to a float32 workspace, then `_merge_kernel`, one program per
    row and BLOCK_D columns, every split in one load:
        M = max_s m_s;  w_s = 2^(m_s - M);  out = sum_s w_s acc_s / sum_s w_s l_s   (0 if no split saw a True)

Tiles: BLOCK_T = 128 positions for D <= 128, 64 for D = 256. Splits (`plan`): one wave of one
program per SM, more when a split's mask would exceed MASK_BYTES. num_splits depends on T (the
buffer's length, not the live length) and the SM count only: no host sync, and the grid is a
function of the shapes, so a CUDA graph can capture the call.

On CUDA tensors the op runs this kernel for head dims 64, 128, 256; another head dim, or a kernel
that cannot compile or take the call, runs the pure-torch reference instead and a WARNING says so
once per error; a CUDA out-of-memory error is raised, not retried. Registration happens at import;
nothing touches a device then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..attention import (
    attention_rows,
    check_decode_attention_args,
    check_decode_attention_quantize_act_args,
    decode_attention,
    decode_attention_quantize_act,
    decode_attention_quantize_act_reference,
    decode_attention_reference,
)
from ..quant.op import act_shapes, empty_quantized_activation
from ._common import (
    act_quant,
    gdc_launch_dependents,
    gdc_wait,
    interpreting,
    kernel_or_reference,
    loop_bound,
    num_sms,
    pdl,
    pdl_early,
    pdl_launch,
    quantize_tiles,
    tanh,
)
from .ops import matvec_reads

HEAD_DIMS = (64, 128, 256)
MASK_BYTES = 32768  # the mask a program loads at once to find its live tiles, at most
SMEM_BYTES = 160 * 1024  # K and V tiles in flight (num_stages - 1 of them) per program, at most
LOG2E = tl.constexpr(1.4426950408889634)  # scores are kept in log2 units: exp2 in the kernels


@triton.jit
def _split_kernel(
    q_ptr,  # [B, Hq, S, D]
    k_ptr,
    v_ptr,  # [B, Hkv, T, D]
    mask_ptr,  # uint8 (the bool mask) [1|B, 1|Hq, S, T], broadcast dims with stride 0
    out_ptr,  # [B, Hq, S, D] (one split) or float32 acc workspace [B * Hkv, NUM_SPLITS, G * S, D]
    ws_m_ptr,
    ws_l_ptr,  # float32 [B * Hkv, NUM_SPLITS, G * S] (several splits)
    Hkv,
    G,
    S,
    T,
    NUM_SPLITS,
    scale,
    softcap,
    sqb,
    sqh,
    sqs,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    smb,
    smh,
    sms,
    smt,
    sob,
    soh,
    sos,
    HAS_SOFTCAP: tl.constexpr,
    SPLIT: tl.constexpr,
    MASK_ROWS: tl.constexpr,  # False: every row of the block reads the same mask row (smh = sms = 0)
    DOT_F32: tl.constexpr,  # the interpreter's bf16 dot is wrong (triton 3.6/3.9): float32 dots there
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" for float32 operands (no TF32 rounding)
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    TILES: tl.constexpr,  # tiles per split at most (a power of two): split s holds tiles s, s + NUM_SPLITS, ..
    PDL: tl.constexpr = False,  # _common.pdl(): wait for the kernel before it
    PDL_EARLY: tl.constexpr = False,  # _common.pdl_early(): once its loop is done, let the merge launch
):
    if PDL:
        gdc_wait()
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    j = pid_bh % Hkv
    GS = G * S
    r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)  # rows of this KV head
    rvalid = r < GS
    h = j * G + r // S  # query head of each row
    s = r % S  # its token
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * sqb + (h * sqh + s * sqs)[:, None] + d[None, :], mask=rvalid[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    # the split's whole mask in one load -> the range [i_lo, i_hi) of its tiles that some row attends to
    ti = tl.arange(0, TILES)
    pos = (pid_s + ti * NUM_SPLITS)[:, None] * BLOCK_T + tl.arange(0, BLOCK_T)[None, :]  # [TILES, BLOCK_T]
    if MASK_ROWS:
        mask_rows = mask_ptr + b * smb + (h * smh + s * sms)[:, None]  # [BLOCK_R, 1]
        row_ok = rvalid[:, None]
        m3 = tl.load(
            mask_rows[:, :, None] + pos[None, :, :] * smt, mask=row_ok[:, :, None] & (pos < T)[None, :, :], other=0
        )
        tile_live = tl.max(tl.max(m3.to(tl.int32), axis=2), axis=0)  # [TILES]
    else:
        mask_rows = mask_ptr + b * smb + tl.zeros([1, 1], dtype=tl.int32)  # [1, 1]: one row for all
        row_ok = tl.full([1, 1], 1, tl.int1)
        tile_live = tl.max(tl.load(mask_rows + pos * smt, mask=pos < T, other=0).to(tl.int32), axis=1)
    i_lo = tl.min(tl.where(tile_live > 0, ti, TILES))
    i_hi = tl.max(tl.where(tile_live > 0, ti + 1, 0))

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, D], dtype=tl.float32)
    k_base = k_ptr + b * skb + j * skh
    v_base = v_ptr + b * svb + j * svh
    # no branch in the loop: K, V and the mask of a tile load at once, and the loads can be pipelined
    for i in range(loop_bound(i_lo), loop_bound(i_hi)):
        t = (pid_s + i * NUM_SPLITS) * BLOCK_T + tl.arange(0, BLOCK_T)
        inb = t < T
        live = tl.load(mask_rows + t[None, :] * smt, mask=row_ok & inb[None, :], other=0) != 0  # [BLOCK_R|1, BLOCK_T]
        kt = tl.load(k_base + t[:, None] * skt + d[None, :], mask=inb[:, None], other=0.0)  # [BLOCK_T, D]
        seen = tl.max(live.to(tl.int32), axis=0) > 0  # positions some row attends to: V counts there only
        vt = tl.load(v_base + t[:, None] * svt + d[None, :], mask=seen[:, None], other=0.0)  # (0 x NaN = NaN)
        if DOT_F32:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        z = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * scale  # [BLOCK_R, BLOCK_T]
        if HAS_SOFTCAP:
            z = softcap * tanh(z / softcap)
        z = tl.where(live, z * LOG2E, float("-inf"))  # K garbage where masked: its z is dropped here
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no True yet: p = 0, a = 0
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(z - m_safe[:, None])  # exactly 0 where masked (z = -inf, m_safe finite)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m_i = m_new

    if PDL_EARLY:  # after the loop: a trigger at the start made 4k-32k live slower (docs/kernels.md "PDL")
        gdc_launch_dependents()
    if SPLIT:
        row = (pid_bh * NUM_SPLITS + pid_s) * GS + r
        tl.store(ws_m_ptr + row, m_i, mask=rvalid)
        tl.store(ws_l_ptr + row, l_i, mask=rvalid)
        tl.store(out_ptr + row.to(tl.int64)[:, None] * D + d[None, :], acc, mask=rvalid[:, None])  # 0 if dead
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l = 0: acc = 0, a row that saw no True
        o_rows = out_ptr + b * sob + (h * soh + s * sos)[:, None]
        tl.store(o_rows + d[None, :], o.to(out_ptr.dtype.element_ty), mask=rvalid[:, None])


@triton.jit
def _merge_kernel(
    ws_acc_ptr,  # float32 [B * Hkv, NUM_SPLITS, G * S, D]
    ws_m_ptr,
    ws_l_ptr,  # float32 [B * Hkv, NUM_SPLITS, G * S]
    out_ptr,  # [B, Hq, S, D]
    xq_ptr,  # QUANT: int8 [B * S, Hq * D]
    xd_ptr,
    xs32_ptr,  # QUANT: float32 [B * S, Hq * D / 32]
    xs16_ptr,  # QUANT: float32 [B * S, Hq * D / 16]
    Hkv,
    G,
    S,
    NUM_SPLITS,
    sob,
    soh,
    sos,
    D: tl.constexpr,
    SPLITS: tl.constexpr,  # NUM_SPLITS rounded up to a power of two
    BLOCK_D: tl.constexpr,
    QUANT: tl.constexpr = False,  # also quantize out's stored values for the o-projection (BLOCK_D % 32 == 0)
    INTERLEAVE: tl.constexpr = False,
    PDL: tl.constexpr = False,  # _common.pdl(): wait for the split kernel, then let the o-projection's matvec start
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    # program (b * Hkv + j, r, dc): row r of KV head j (query head j * G + r // S, token r % S),
    # columns dc * BLOCK_D ..; every split's partial in one load each (no dependent loop)
    pid_bh = tl.program_id(0)
    r = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    j = pid_bh % Hkv
    GS = G * S
    i = tl.arange(0, SPLITS)
    at = pid_bh * NUM_SPLITS * GS + r + i * GS  # row r of split i
    ok = i < NUM_SPLITS
    m_s = tl.load(ws_m_ptr + at, mask=ok, other=float("-inf"))
    l_s = tl.load(ws_l_ptr + at, mask=ok, other=0.0)
    m_all = tl.max(m_s)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)  # no split saw a True: every weight is 0
    w = tl.exp2(m_s - m_all)  # 0 where m_s = -inf (l_s = 0)
    den = tl.sum(w * l_s)
    dd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.load(ws_acc_ptr + at.to(tl.int64)[:, None] * D + dd[None, :], mask=ok[:, None], other=0.0)  # 0 if dead
    o = tl.sum(w[:, None] * acc, axis=0) / tl.where(den > 0, den, 1.0)
    h = j * G + r // S
    o = o.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + b * sob + h * soh + (r % S) * sos + dd, o)
    if QUANT:  # x = out.transpose(1, 2).reshape(B * S, Hq * D): row b * S + s, columns h * D + dd
        K = G * Hkv * D
        g = (h * D + tl.program_id(2) * BLOCK_D) // 32 + tl.arange(0, BLOCK_D // 32)
        tiles = tl.reshape(o.to(tl.float32), [BLOCK_D // 32, 32])
        quantize_tiles(tiles, b * S + r % S, g, g < K // 32, K, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, INTERLEAVE)


@dataclass(frozen=True)
class Plan:
    """How one call is cut into programs: a function of the tensor shapes and the SM count only."""

    block_r: int  # query rows per program: G * S padded to a power of two >= 16 (tl.dot), capped
    row_blocks: int  # programs along the G * S rows
    block_t: int  # cache positions per tile
    tiles: int  # tiles per split at most, a power of two (split s holds tiles s, s + num_splits, ..)
    num_splits: int
    num_warps: int
    num_stages: int = 3


def plan(
    B: int,
    Hq: int,
    Hkv: int,
    S: int,
    D: int,
    T: int,
    n_sms: int,
    num_splits: int | None = None,
    elt_bytes: int = 2,
    mask_rows: bool = True,
) -> Plan:
    """The launch plan. The buffer's tiles are dealt to the splits in turn (split s holds tiles s,
    s + num_splits, ..), so that any live range, short or long, spreads evenly over the splits.
    Without `num_splits`: as many splits as fill one wave of one program per SM (a 3-stage pipeline
    of K and V tiles takes most of an SM's shared memory: 17 splits of 8 heads on 132 SMs ran in
    two waves, 64 us at 32k live against 38 us for 16), or more when a program would load over
    MASK_BYTES of mask at once (per query row when the rows' masks differ: `mask_rows`); at most
    one split per tile. `num_splits` asks for that many (tests). Pipeline stages: as many as
    SMEM_BYTES of K and V tiles of `elt_bytes` elements allow, at most 3."""
    GS = Hq // Hkv * S
    block_r = min(max(triton.next_power_of_2(GS), 16), 32 if D == 256 else 64)
    block_t = 128 if D <= 128 else 64
    n_tiles = triton.cdiv(T, block_t)
    row_blocks = triton.cdiv(GS, block_r)
    if num_splits is None:
        max_tiles = max(MASK_BYTES // ((block_r if mask_rows else 1) * block_t), 1)
        num_splits = max(triton.cdiv(n_tiles, max_tiles), max(n_sms // (B * Hkv * row_blocks), 1))
    num_splits = min(max(num_splits, 1), n_tiles)
    return Plan(
        block_r=block_r,
        row_blocks=row_blocks,
        block_t=block_t,
        tiles=triton.next_power_of_2(triton.cdiv(n_tiles, num_splits)),
        num_splits=num_splits,
        num_warps=8 if block_r * D >= 32 * 256 or block_t * D >= 128 * 128 else 4,
        num_stages=min(1 + SMEM_BYTES // (2 * block_t * D * elt_bytes), 3),
    )


def decode_attention_cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    scale: float,
    softcap: float,
    num_splits: int | None = None,
    quantize: bool | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """The kernel's launcher (arguments already validated; CPU tensors under TRITON_INTERPRET=1).
    q [B, Hq, S, D], k/v [B, Hkv, T, D], mask bool [1|B, 1|Hq, S, T] -> [B, Hq, S, D] in q.dtype.
    num_splits: about how many T-splits (default: `plan`'s choice); tests set it. quantize (the
    interleave flag; None: no): also return quantize_act's (xq, xd, xs32, xs16) of
    attention_rows(out), as [B * S, ...] tensors, made by the merge step (one split: act_quant)."""
    B, Hq, S, D = q.shape
    _, Hkv, T, _ = k.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"decode_attention kernel: head dim {D} not in {HEAD_DIMS}")
    if not (q.is_cuda or interpreting()):
        raise ValueError(f"decode_attention kernel: needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    G = Hq // Hkv
    GS = G * S
    m8 = mask.view(torch.uint8)
    smb, smh, sms, smt = (0 if n == 1 else st for n, st in zip(m8.shape, m8.stride()))  # broadcast: stride 0
    mask_rows = not (smh == 0 and (sms == 0 or S == 1))  # else every query row reads one mask row
    p = plan(B, Hq, Hkv, S, D, T, num_sms(q.device), num_splits, k.element_size(), mask_rows)
    out = torch.empty((B, Hq, S, D), dtype=q.dtype, device=q.device)
    if p.num_splits > 1:
        ws_acc = torch.empty((B * Hkv, p.num_splits, GS, D), dtype=torch.float32, device=q.device)
        ws_m = torch.empty((B * Hkv, p.num_splits, GS), dtype=torch.float32, device=q.device)
        ws_l = torch.empty_like(ws_m)
        dst = ws_acc
    else:
        dst = ws_m = ws_l = out
    _split_kernel[(B * Hkv, p.num_splits, p.row_blocks)](
        q,
        k,
        v,
        m8,
        dst,
        ws_m,
        ws_l,
        Hkv,
        G,
        S,
        T,
        p.num_splits,
        float(scale),
        float(softcap),
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        smb,
        smh,
        sms,
        smt,
        *out.stride()[:3],
        HAS_SOFTCAP=softcap > 0,
        SPLIT=p.num_splits > 1,
        MASK_ROWS=mask_rows,
        DOT_F32=interpreting(),
        PRECISION="ieee" if q.dtype == torch.float32 or interpreting() else "tf32",  # tf32: unused for 16-bit
        D=D,
        BLOCK_R=p.block_r,
        BLOCK_T=p.block_t,
        TILES=p.tiles,
        num_warps=p.num_warps,
        num_stages=p.num_stages,
        PDL=pdl(q.device),
        PDL_EARLY=pdl_early(q.device),
        **pdl_launch(q.device),
    )
    quant = quantize is not None
    if p.num_splits == 1:  # the split kernel wrote out itself: any quantization is a launch of its own
        if not quant:
            return out
        xa = act_quant(attention_rows(out).reshape(B * S, Hq * D), interleave=quantize)
        return out, xa.xq, xa.xd, xa.xs32, xa.xs16
    xa = empty_quantized_activation(q.new_empty((B * S, Hq * D))) if quant else (out,) * 4
    splits_p2 = triton.next_power_of_2(p.num_splits)
    # a [splits, BLOCK_D] float32 tile of <= 8192; whole 32-tiles of out when quantizing
    block_d = min(D, max(8192 // splits_p2, 32 if quant else 8))
    _merge_kernel[(B * Hkv, GS, D // block_d)](
        ws_acc,
        ws_m,
        ws_l,
        out,
        xa[0].view(torch.int8) if quant else out,  # (xq: int8 values, stored as int32 words)
        *xa[1:],
        Hkv,
        G,
        S,
        p.num_splits,
        *out.stride()[:3],
        D=D,
        SPLITS=splits_p2,
        BLOCK_D=block_d,
        QUANT=quant,
        INTERLEAVE=bool(quantize),
        PDL=pdl(q.device),
        num_warps=4,
        **pdl_launch(q.device),
    )
    return (out, *xa) if quant else out


@decode_attention.register_kernel("cuda")
def _decode_attention_cuda(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, softcap: float) -> Tensor:
    args = (q, k, v, mask, scale, softcap)
    check_decode_attention_args(*args)
    # a head dim without a kernel, a kernel that cannot compile: the reference, one WARNING
    return kernel_or_reference("decode_attention", decode_attention_cuda, decode_attention_reference, *args)


@decode_attention_quantize_act.register_kernel("cuda")
def _decode_attention_quantize_act_cuda(q, k, v, mask, scale, softcap, interleave, max_m):  # (types: the op's)
    args = (q, k, v, mask, scale, softcap)
    check_decode_attention_quantize_act_args(*args, interleave, max_m)
    B, Hq, S, D = q.shape
    if not matvec_reads(B * S, max_m):
        out = kernel_or_reference("decode_attention", decode_attention_cuda, decode_attention_reference, *args)
        return (out, *empty_quantized_activation(q.new_empty((B, S, Hq * D))))
    out = kernel_or_reference(
        "decode_attention", _quantized_kernel, decode_attention_quantize_act_reference, *args, interleave
    )
    rows = torch.empty((B, S, Hq * D), device="meta")  # the o-projection's input: the int8 tensors' shapes
    return (out[0], *(t.reshape(shape) for t, shape in zip(out[1:], act_shapes(rows))))


def _quantized_kernel(q, k, v, mask, scale, softcap, interleave):
    return decode_attention_cuda(q, k, v, mask, scale, softcap, quantize=interleave)
