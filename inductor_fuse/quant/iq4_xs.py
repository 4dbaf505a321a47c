"""IQ4_XS: 256-weight super-blocks of 8 sub-blocks of 32, 4-bit codes into a non-linear grid.

GGUF block (136 bytes): d fp16, scales_h uint16 (bits 2ib..2ib+1 = bits 4-5 of ls_ib),
scales_l[4] (byte j: ls_2j in the low nibble, ls_2j+1 in the high nibble), qs[128] (16 bytes per
sub-block ib: byte 16ib + j holds code j in its low nibble, code 16 + j in its high nibble).
ls_ib is a 6-bit scale stored with a +32 offset.

Planes for a weight [N, K] (nb = K/256 super-blocks per row):
    qs uint8 [N, K/2]   16 bytes per 32-weight sub-block, nibbles in kernel order (below)
    sc int8  [N, K/32]  per sub-block: ls - 32, in [-32, 31]
    d  float16 [N, nb]

Kernel order of a sub-block's 16 qs bytes: int32 word t (bytes 4t..4t+3) holds codes 4t..4t+3 in
its nibbles 0-3 (bits 0..15) and codes 16+4t..16+4t+3 in its nibbles 4-7, ascending. So the
matvec's byte-permute lookup of nibbles 0-3 (4-7) of word t gives int8 grid values in the order of
activation word t (4 + t) of the sub-block, with no reordering. GGUF's order is restored by
to_gguf_bytes (a pure permutation: GGUF bytes round-trip exactly).

Dequantization (float32, this op order, as gguf.quants):
    w[32ib + i] = (d * (ls_ib - 32)) * KVALUES[q[32ib + i]]
    KVALUES = kvalues_iq4nl = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import (
    Codes,
    WeightFormat,
    f16_field,
    join_nibbles,
    pack_int4,
    plane_table,
    register,
    split_nibbles,
    unpack_int4,
)

QK_K = 256
KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
GROUP_MAX_EPS = 1e-15  # ggml-quants.c: a sub-block with absmax below this gets scale 0
NTRY = 7  # quantize_iq4_xs passes ntry = 7 to quantize_row_iq4_nl_impl


def kernel_pack(q: Tensor) -> Tensor:
    # codes uint8 [..., 32] (element e = 16h + 4t + j) -> kernel-order bytes uint8 [..., 16]:
    # nibble position p = 8t + 4h + j, byte p // 2, low nibble for even p
    return pack_int4(q.unflatten(-1, (2, 4, 4)).transpose(-3, -2).flatten(-3))  # by position


def kernel_codes(qs: Tensor) -> Tensor:
    # kernel-order bytes uint8 [..., 16] -> codes uint8 [..., 32] in element order
    return unpack_int4(qs).unflatten(-1, (4, 2, 4)).transpose(-3, -2).flatten(-3)


def grid_values(qs: Tensor) -> Tensor:
    """Kernel-order bytes uint8 [..., 16] of 32-blocks -> their grid values int8 [..., 32] in
    element order (IQ4_XS's sub-blocks, IQ4_NL's blocks)."""
    kv = torch.tensor(KVALUES, dtype=torch.int8, device=qs.device)
    return kv[kernel_codes(qs).to(torch.int64)]


def best_index(v: Tensor, kv: Tensor) -> Tensor:
    # best_index_int8 (ggml-quants.c): the nearest grid value's index, ties to the upper one, in
    # float32 arithmetic as in C. v float32 [...], kv float32 [16] ascending -> int64 [...]
    mu = torch.searchsorted(kv, v.contiguous(), right=True).clamp(1, 15)  # first kv > v
    idx = torch.where(v - kv[mu - 1] < kv[mu] - v, mu - 1, mu)
    idx = torch.where(v <= kv[0], torch.zeros_like(idx), idx)
    return torch.where(v >= kv[15], torch.full_like(idx, 15), idx)


def _seq_sum(t: Tensor) -> Tensor:
    # sum over the last dim in C's order (float32, left to right): the scale search compares
    # sums of candidates, and a different order can flip a near tie
    acc = t[..., 0].clone()
    for j in range(1, t.shape[-1]):
        acc += t[..., j]
    return acc


def _fit(x: Tensor, weight: Tensor, iscale: Tensor, kv: Tensor) -> tuple[Tensor, Tensor]:
    # codes of x at iscale [..., 1] -> (sum w q x, sum w q^2) over the last dim, float32
    q = kv[best_index(iscale * x, kv)]
    wq = weight * q
    return _seq_sum(wq * x), _seq_sum(wq * q)


def block_scales(x: Tensor, kv: Tensor) -> Tensor:
    """The scale search of quantize_row_iq4_nl_impl (ggml-quants.c, no importance weights, ntry = 7)
    on 32-blocks x float32 [..., 32] -> float32 [...] (IQ4_XS's sub-blocks, IQ4_NL's blocks):
    weights w = x^2; max = signed absmax (the first); absmax < 1e-15: scale 0;
      d = max / -127, codes = best_index(x / d), d = sum(w q x) / sum(w q^2), best = d sum(w q x)
      for itry in -7..7: codes = best_index(x (itry - 127) / max); keep d = sum(wqx) / sum(wq^2)
        when sum(wqx)^2 > best sum(wq^2)."""
    weight = x * x
    ax = x.abs()
    mx = x.gather(-1, ax.argmax(-1, keepdim=True))  # [..., 1]
    skip = ax.amax(-1, keepdim=True) < GROUP_MAX_EPS
    mx = torch.where(skip, torch.ones_like(mx), mx)

    d = -mx / float(KVALUES[0])
    sumqx, sumq2 = _fit(x, weight, 1 / d, kv)
    d = sumqx / sumq2
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        # (itry + values[0]) / max: a true division (python scalar / tensor is reciprocal * scalar)
        sumqx, sumq2 = _fit(x, weight, torch.full_like(mx, itry + KVALUES[0]) / mx, kv)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = torch.where(better, sumqx / sumq2, d)
        best = torch.where(better, d * sumqx, best)
    return torch.where(skip[..., 0], torch.zeros_like(d), d)


class IQ4XSFormat(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK_K // 2), sc=(torch.int8, 8), d=(torch.float16, 1))
    code_group = 32

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 136]
        n, nb, _ = blocks.shape
        d = f16_field(blocks, 0)  # [N, nb, 1]
        sh = blocks[..., 2].to(torch.int32) | (blocks[..., 3].to(torch.int32) << 8)  # [N, nb]
        sl = blocks[..., 4:8]
        lo = unpack_int4(sl).to(torch.int32)  # [N, nb, 8]
        shifts = 2 * torch.arange(8, dtype=torch.int32, device=blocks.device)
        ls = lo | (((sh[..., None] >> shifts) & 3) << 4)
        sc = (ls - 32).to(torch.int8)
        codes = split_nibbles(blocks[..., 8:].unflatten(-1, (8, 16)))  # [N, nb, 8, 32]
        return kernel_pack(codes).reshape(n, -1), sc.reshape(n, -1), d.reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, sc, d = planes
        nb = k // QK_K
        ls = (sc.view(n, nb, 8).to(torch.int32) + 32) & 63
        lo = ls & 0xF
        sl = pack_int4(lo).to(torch.uint8)  # [N, nb, 4]
        shifts = 2 * torch.arange(8, dtype=torch.int32, device=qs.device)
        sh = ((ls >> 4) << shifts).sum(-1)  # [N, nb], 16 bits
        sh = torch.stack([sh & 0xFF, sh >> 8], dim=-1).to(torch.uint8)
        qs = join_nibbles(kernel_codes(qs.view(n, nb, 8, 16))).reshape(n, nb, QK_K // 2)
        return torch.cat([d.view(n, nb, 1).view(torch.uint8), sh, sl, qs], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, sc, d = planes
        nb = k // QK_K
        q = grid_values(qs.view(n, nb, 8, 16))  # [N, nb, 8, 32]
        dl = d.view(n, nb, 1).to(torch.float32) * sc.view(n, nb, 8).to(torch.float32)  # [N, nb, 8]
        return Codes(q.reshape(n, k), dl.reshape(n, nb * 8), None)

    # quantize_iq4_xs without importance weights = quantize_row_iq4_nl_impl(QK_K, 32, ...,
    # kvalues_iq4nl, quant_weights=NULL, ntry=7) (ggml-quants.c), vectorised over sub-blocks:
    #   per sub-block (weights w = x^2; max = signed absmax, the first; absmax < 1e-15: scale 0):
    #     d = max / 127, codes = best_index(x / d), d = sum(w q x) / sum(w q^2), best = d sum(w q x)
    #     for itry in -7..7: codes = best_index(x (itry - 127) / max); keep d = sum(wqx) / sum(wq^2)
    #       when sum(wqx)^2 > best sum(wq^2)        (the scale search over the non-linear grid)
    #   super-block: max_scale = the sub-block scale of largest |.| (the first), d = -max_scale / 32
    #     (stored as fp16), l_ib = clamp(nearest_int(scale_ib / d), -32, 31)
    #     codes = best_index(x / (d l_ib))   (d in float32 here, as in C; 0 when d l_ib == 0)
    # best_index: nearest grid value, ties to the upper one. Every product, division and sum is
    # float32 in C's order, so the bytes equal those of the C code built without FMA contraction
    # (checked on 3.4M weights of assorted distributions; an FMA build may differ in near ties).
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        nb = k // QK_K
        kv = torch.tensor(KVALUES, dtype=torch.float32, device=w.device)
        x = w.reshape(n * nb, 8, 32)
        scales = block_scales(x, kv)  # [R, 8]

        max_scale = scales.gather(-1, scales.abs().argmax(-1, keepdim=True))  # [R, 1]
        dsb = -max_scale / 32
        inv = torch.where(dsb != 0, 1 / dsb, torch.zeros_like(dsb))
        l = torch.round(inv * scales).clamp(-32, 31)  # nearest_int: round half to even
        dl = dsb * l
        idl = torch.where(dl != 0, 1 / dl, torch.zeros_like(dl))
        codes = best_index(idl[..., None] * x, kv).to(torch.uint8)  # [R, 8, 32]

        qs = kernel_pack(codes)  # [R, 8, 16]
        return qs.reshape(n, -1), l.to(torch.int8).reshape(n, -1), dsb.to(torch.float16).reshape(n, -1)


IQ4_XS = register(IQ4XSFormat(name="iq4_xs", block_size=QK_K, ggml_type=GGMLQuantizationType.IQ4_XS, type_size=136))
