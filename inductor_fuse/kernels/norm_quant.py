"""The RMSNorm that quantizes its own output: the Triton kernel behind the CUDA body of
torch.ops.inductor_fuse.rmsnorm_quantize_act (registered in kernels/ops.py; the op and its
pure-torch reference: quant/op.py; the rule that emits it: patterns/act_quant.py).

Why a kernel of its own, in a file of its own: the W4A8 matvecs read the activation as int8 per
32-wide K tile (kernels/_common.py, `act_quant`), and in a Llama-style layer that activation is an
RMSNorm's output (before q|k|v, before gate|up, before lm_head). Quantizing it where it is made
saves a launch and a read of y per layer input: one program per row reads h (once when the row fits
one block, else twice: sum of squares, then y), stores y in h's dtype and quantizes y's stored
values per 32-tile with `_common.quantize_tiles`, the same formula (the same code) as
`_act_quant_kernel`: so the int8 buffers are bit for bit quantize_act(y) of the y this kernel
stored. It sits next to nothing else because it is the only norm kernel: _common.py holds what the
weight formats share.

    n = h32 * rsqrt(sum(h32^2) / K + eps)                       (float32)
    CAST_FIRST:  y = (n.to(dtype) * w)                          (LlamaRMSNorm)
    else:        y = (n * (w32 + W_OFFSET)).to(dtype)           (models/transformer.py, Gemma3)

With ADD, h is first the residual sum s = h + r (rounded to h's dtype, as aten's add), stored;
with NORM_R too, r is first normalized itself (its own weight, eps and flavour, rounded to h's
dtype): Gemma 3's sandwich norm, s = x + post_norm(o), then the next pre-norm of s, in one launch
(rows of up to 8192: a longer one is normalized by the pure-torch RMSNorm first).

With QUANT off (more rows than any consumer's matvec takes) it computes y alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.op import rmsnorm_reference
from ._common import gdc_launch_dependents, gdc_wait, interpreting, loop_bound, pdl, pdl_launch, quantize_tiles


@triton.jit
def _rmsnorm_quantize_kernel(
    h_ptr,  # [M, K] float, row stride stride_hm
    r_ptr,  # [M, K] h's dtype, row stride stride_rm (ADD: the residual added to h before the norm)
    wr_ptr,  # [K] float (NORM_R: r's own RMSNorm weight)
    s_ptr,  # [M, K] h's dtype, contiguous (ADD: h + r stored)
    w_ptr,  # [K] float
    y_ptr,  # [M, K] h's dtype, contiguous
    xq_ptr,  # int8 [M, K]
    xd_ptr,  # f32 [M, K/32]
    xs32_ptr,  # f32 [M, K/32]
    xs16_ptr,  # f32 [M, K/16]
    K,
    stride_hm,
    stride_rm,
    eps,
    eps_r,
    W_OFFSET: tl.constexpr,
    CAST_FIRST: tl.constexpr,
    ADD: tl.constexpr,
    NORM_R: tl.constexpr,  # (with ADD, ONE_PASS) r normalized first: weight wr, eps_r, WR_OFFSET, R_CAST_FIRST
    WR_OFFSET: tl.constexpr,
    R_CAST_FIRST: tl.constexpr,
    QUANT: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    ONE_PASS: tl.constexpr,
    PDL: tl.constexpr = False,  # _common.pdl(): wait for the kernel before it, then let the next (a matvec) start
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    m = tl.program_id(0)
    G = K // 32
    rn = (wr_ptr, eps_r, WR_OFFSET, R_CAST_FIRST)
    if ONE_PASS:  # the whole row in registers (BLOCK_G >= G): h read once
        g = tl.arange(0, BLOCK_G)
        h = _row_tiles(h_ptr, r_ptr, s_ptr, m, g, K, stride_hm, stride_rm, ADD, NORM_R, rn, True)
        r = 1.0 / tl.sqrt(tl.sum(tl.sum(h * h, axis=1), axis=0) / K + eps)
        _norm_tiles(
            h, r, w_ptr, m, g, K, y_ptr, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, W_OFFSET, CAST_FIRST, QUANT, INTERLEAVE
        )
    else:
        acc = tl.zeros((BLOCK_G, 32), dtype=tl.float32)
        for g0 in range(0, loop_bound(G), BLOCK_G):  # pass 1: the sum of squares (and h + r stored)
            h = _row_tiles(
                h_ptr, r_ptr, s_ptr, m, g0 + tl.arange(0, BLOCK_G), K, stride_hm, stride_rm, ADD, False, rn, True
            )
            acc += h * h
        r = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=1), axis=0) / K + eps)
        for g0 in range(0, loop_bound(G), BLOCK_G):  # pass 2: y, stored, then quantized
            g = g0 + tl.arange(0, BLOCK_G)
            h = _row_tiles(h_ptr, r_ptr, s_ptr, m, g, K, stride_hm, stride_rm, ADD, False, rn, False)
            _norm_tiles(
                h, r, w_ptr, m, g, K, y_ptr, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, W_OFFSET, CAST_FIRST, QUANT, INTERLEAVE
            )


@triton.jit
def _row_tiles(
    h_ptr, r_ptr, s_ptr, m, g, K, stride_hm, stride_rm,
    ADD: tl.constexpr, NORM_R: tl.constexpr, rn, STORE_SUM: tl.constexpr,
):  # fmt: skip
    """The 32-tiles g of row m of the normalized input as float32 [BG, 32] (masked tiles: 0): h, or
    with ADD h + r rounded to h's dtype (as aten's add), stored to s when STORE_SUM. NORM_R (only
    when g holds the whole row): r is first RMS-normalized with rn = (wr_ptr, eps_r, WR_OFFSET,
    R_CAST_FIRST) and rounded to h's dtype, as the unfused norm stores it."""
    offs = g[:, None] * 32 + tl.arange(0, 32)[None, :]
    gmask = (g < K // 32)[:, None]
    h = tl.load(h_ptr + m * stride_hm + offs, mask=gmask, other=0.0)
    if ADD:
        res = tl.load(r_ptr + m * stride_rm + offs, mask=gmask, other=0.0)
        if NORM_R:
            wr_ptr, eps_r, WR_OFFSET, R_CAST_FIRST = rn
            r32 = res.to(tl.float32)
            rr = 1.0 / tl.sqrt(tl.sum(tl.sum(r32 * r32, axis=1), axis=0) / K + eps_r)
            res = _weigh(r32 * rr, wr_ptr, offs, gmask, h.dtype, WR_OFFSET, R_CAST_FIRST)
        h = (h.to(tl.float32) + res.to(tl.float32)).to(s_ptr.dtype.element_ty)  # round to nearest even
        if STORE_SUM:
            tl.store(s_ptr + m * K + offs, h, mask=gmask)
    return h.to(tl.float32)


@triton.jit
def _weigh(n, w_ptr, offs, gmask, dtype: tl.constexpr, W_OFFSET: tl.constexpr, CAST_FIRST: tl.constexpr):
    """The normalized tiles n (float32) times the norm's weight, in `dtype` (rmsnorm_reference's two
    flavours): CAST_FIRST n.to(dtype) * w, else (n * (w32 + W_OFFSET)).to(dtype)."""
    w = tl.load(w_ptr + offs, mask=gmask, other=0.0).to(tl.float32)
    if CAST_FIRST:
        return (n.to(dtype).to(tl.float32) * w).to(dtype)
    return (n * (w + W_OFFSET)).to(dtype)


@triton.jit
def _norm_tiles(
    h, r, w_ptr, m, g, K, y_ptr, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr,
    W_OFFSET: tl.constexpr, CAST_FIRST: tl.constexpr, QUANT: tl.constexpr, INTERLEAVE: tl.constexpr,
):  # fmt: skip
    """y of the 32-tiles g (h [BG, 32] float32, r the row's 1/rms): stored, then quantized."""
    offs = g[:, None] * 32 + tl.arange(0, 32)[None, :]
    gmask = g < K // 32
    y = _weigh(h * r, w_ptr, offs, gmask[:, None], y_ptr.dtype.element_ty, W_OFFSET, CAST_FIRST)
    tl.store(y_ptr + m * K + offs, y, mask=gmask[:, None])
    if QUANT:
        quantize_tiles(y.to(tl.float32), m, g, gmask, K, xq_ptr, xd_ptr, xs32_ptr, xs16_ptr, INTERLEAVE)


def rmsnorm_quantize(
    h: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    w_offset: float,
    cast_before_weight: bool,
    interleave: bool,
    quant: bool,
    residual: torch.Tensor | None = None,
    residual_norm: tuple[torch.Tensor, float, float, bool] | None = None,
) -> tuple[torch.Tensor, ...]:
    """h [M, K] (K % 32 == 0), w [K] -> (y [M, K] in h's dtype, xq int32 [M, K/4], xd, xs32 [M, K/32],
    xs16 [M, K/16]); with quant off the last four are None (not computed). With a residual [M, K]
    (h's dtype) the norm is of s = h + residual, and s [M, K] is returned first; with residual_norm
    (w_r, eps_r, w_offset_r, cast_before_weight_r) too, of s = h + rmsnorm(residual)."""
    M, K = h.shape
    if K % 32:
        raise ValueError(f"rmsnorm_quantize: K must be a multiple of 32, got {K}")
    h = h if h.stride(1) == 1 else h.contiguous()
    w = w.contiguous()
    dev = h.device
    y = torch.empty((M, K), dtype=h.dtype, device=dev)
    if residual_norm is not None and residual is None:
        raise ValueError("rmsnorm_quantize: residual_norm needs a residual")
    if residual is not None:
        if residual.shape != h.shape or residual.dtype != h.dtype:
            raise ValueError(
                f"rmsnorm_quantize: residual must be {list(h.shape)} {h.dtype}, "
                f"got {list(residual.shape)} {residual.dtype}"
            )
        residual = residual if residual.stride(1) == 1 else residual.contiguous()
        s = torch.empty((M, K), dtype=h.dtype, device=dev)
    else:
        residual = s = y  # unused pointers (ADD off)
    if quant:
        xq = torch.empty((M, K), dtype=torch.int8, device=dev)
        xd = torch.empty((M, K // 32), dtype=torch.float32, device=dev)
        xs32 = torch.empty((M, K // 32), dtype=torch.float32, device=dev)
        xs16 = torch.empty((M, K // 16), dtype=torch.float32, device=dev)
    else:
        xq = xd = xs32 = xs16 = y  # unused pointers (QUANT off)
    G = K // 32
    add = s is not y
    # a row of up to 256 tiles (K <= 8192) in one block: h read once, one load's latency (at M = 1
    # the kernel is one program); longer rows loop twice over 32 tiles at a time
    BLOCK_G = triton.next_power_of_2(G) if G <= 256 else 32
    if interpreting() and residual_norm is None:
        BLOCK_G = min(BLOCK_G, 8)  # (the interpreter is slow with large blocks: the two-pass loop tested too)
    if residual_norm is not None and BLOCK_G < G:  # a row too long for one block: r's norm first, in torch
        residual, residual_norm = rmsnorm_reference(residual, *residual_norm), None
    wr, eps_r, wr_offset, r_cast_first = residual_norm or (w, 0.0, 0.0, False)
    _rmsnorm_quantize_kernel[(M,)](
        h, residual, wr.contiguous(), s, w, y, xq, xd, xs32, xs16, K, h.stride(0), residual.stride(0), float(eps),
        float(eps_r), W_OFFSET=float(w_offset), CAST_FIRST=cast_before_weight, ADD=add,
        NORM_R=residual_norm is not None, WR_OFFSET=float(wr_offset), R_CAST_FIRST=r_cast_first, QUANT=quant,
        INTERLEAVE=interleave, BLOCK_G=BLOCK_G, ONE_PASS=BLOCK_G >= G, PDL=pdl(dev),
        num_warps=8 if BLOCK_G >= 128 else 4, **pdl_launch(dev),
    )  # fmt: skip
    out = (y, xq.view(torch.int32), xd, xs32, xs16) if quant else (y, None, None, None, None)
    return (s, *out) if add else out
