"""Q4_K: 256-weight super-blocks of 8 sub-blocks of 32, 4-bit quants with a scale and a min each.

GGUF block (144 bytes): d fp16, dmin fp16, scales[12] (8 six-bit scales + 8 six-bit mins, packed),
qs[128] (byte 32*g + l holds sub-block 2g element l in its low nibble, sub-block 2g+1 element l in
its high nibble).

Planes for a weight [N, K] (nb = K/256 blocks per row):
    qs  uint8   [N, K/2]   each block's 128 qs bytes in GGUF order
    sm  uint8   [N, K/16]  per sub-block j: sc_j, m_j (6-bit, unpacked), interleaved sc0, m0, sc1, ...
    dm  float16 [N, 2*nb]  per block: d, dmin

Dequantization (float32, this op order, as gguf.quants / ggml):
    w[j, l] = (d * sc_j) * q[j, l] - (dmin * m_j)
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, plane_table, register

QK_K = 256


def _unpack_scale_min(s: Tensor) -> tuple[Tensor, Tensor]:
    # s: uint8 [..., 12] -> sc, m: uint8 [..., 8]
    # bytes 0-3: sc0-3 (low 6 bits), high 2 bits = sc4-7 >> 4
    # bytes 4-7: m0-3  (low 6 bits), high 2 bits = m4-7 >> 4
    # bytes 8-11: sc4-7 low 4 bits | m4-7 low 4 bits << 4
    s0, s1, s2 = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([s0 & 63, (s2 & 0xF) | ((s0 >> 6) << 4)], dim=-1)
    m = torch.cat([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], dim=-1)
    return sc, m


def _pack_scale_min(sc: Tensor, m: Tensor) -> Tensor:
    # sc, m: uint8 [..., 8] (values < 64) -> uint8 [..., 12], inverse of _unpack_scale_min
    lo_sc, hi_sc = sc[..., :4], sc[..., 4:]
    lo_m, hi_m = m[..., :4], m[..., 4:]
    s0 = lo_sc | ((hi_sc >> 4) << 6)
    s1 = lo_m | ((hi_m >> 4) << 6)
    s2 = (hi_sc & 0xF) | ((hi_m & 0xF) << 4)
    return torch.cat([s0, s1, s2], dim=-1)


def unpack_nibbles(qs: Tensor) -> Tensor:
    # qs: uint8 [..., 128] -> uint8 [..., 8, 32]; sub-block 2g = low nibbles of bytes 32g..32g+31,
    # sub-block 2g+1 = their high nibbles
    qs = qs.unflatten(-1, (4, 32))
    return torch.stack([qs & 0xF, qs >> 4], dim=-2).flatten(-3, -2)


def pack_nibbles(q: Tensor) -> Tensor:
    # q: uint8 [..., 8, 32] (values < 16) -> uint8 [..., 128]
    q = q.unflatten(-2, (4, 2))
    return (q[..., 0, :] | (q[..., 1, :] << 4)).flatten(-2)


# make_qkx2_quants (ggml-quants.c), vectorised over sub-blocks (rdelta = 0.1, squared error; Q4_K:
# nmax = 15, rmin = -1, nstep = 20; Q5_K: nmax = 31, rmin = -0.5, nstep = 15):
#   min = min(min(x), 0), max = max(x); start from L = round(nmax (x - min) / (max - min)) and
#   for iscale_s = (nmax + rmin + rdelta s) / (max - min), s = 0..nstep (min: the best so far):
#     L_s = clamp(round(iscale_s (x - min)), 0, nmax)
#     (scale, min) = weighted least squares fit of x ~ scale * L_s + min   (min forced <= 0)
#     keep the candidate with the smallest sum w (scale L_s + min - x)^2.
def _search_scale_min(x: Tensor, w: Tensor, nmax: int, rmin: float, nstep: int) -> tuple[Tensor, Tensor, Tensor]:
    # x, w: [S, 32] -> scale [S], the_min [S] (= -min >= 0), L uint8 [S, 32]
    mn = x.amin(-1).clamp(max=0.0)
    mx = x.amax(-1)
    flat = mx == mn  # all equal (and <= 0): scale 0, L = 0
    rng = torch.where(flat, torch.ones_like(mx), mx - mn)
    sum_w = w.sum(-1)
    sum_x = (w * x).sum(-1)
    iscale = nmax / rng
    scale = 1.0 / iscale
    L = torch.round(iscale[:, None] * (x - mn[:, None])).clamp(0, nmax)
    best = (w * (scale[:, None] * L + mn[:, None] - x).square()).sum(-1)
    best_min = mn

    for step in range(nstep + 1):
        # float32 arithmetic of rmin + rdelta * step + nmax, as in C. As in C, each step measures
        # from the best min found so far (not the initial one).
        num = float(np.float32(rmin) + np.float32(0.1) * np.float32(step) + np.float32(nmax))
        rng = torch.where(flat, torch.ones_like(mx), mx - best_min)
        Laux = torch.round((num / rng)[:, None] * (x - best_min[:, None])).clamp(0, nmax)
        wl = w * Laux
        sum_l = wl.sum(-1)
        sum_l2 = (wl * Laux).sum(-1)
        sum_xl = (wl * x).sum(-1)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        err = (w * (this_scale[:, None] * Laux + this_min[:, None] - x).square()).sum(-1)
        better = (D > 0) & (err < best)
        L = torch.where(better[:, None], Laux, L)
        best = torch.where(better, err, best)
        scale = torch.where(better, this_scale, scale)
        best_min = torch.where(better, this_min, best_min)

    scale = torch.where(flat, torch.zeros_like(scale), scale)
    L = torch.where(flat[:, None], torch.zeros_like(L), L)
    return scale, -best_min, L.to(torch.uint8)


def _nearest_u8(v: Tensor) -> Tensor:
    # C: uint8_t l = nearest_int(v)  (round half to even, then wrap to 8 bits)
    return (torch.round(v).to(torch.int64) & 0xFF).to(torch.uint8)


def quantize_scale_min(w: Tensor, nmax: int, rmin: float, nstep: int) -> tuple[Tensor, Tensor, Tensor]:
    """quantize_row_q4_K_ref / quantize_row_q5_K_ref (ggml-quants.c), vectorised, up to packing the
    codes: w float32 [N, K] -> L uint8 [N*K/256, 8, 32] (codes <= nmax), sm uint8 [N*K/256, 8, 2]
    (sc_j, m_j), dm float16 [N*K/256, 2] (d, dmin).

    Per sub-block j: weights = sqrt(mean(x^2)) + |x|; (scale_j, min_j) = the make_qkx2 search;
    d = fp16(max_j scale_j / 63), dmin = fp16(max_j min_j / 63); sc_j = min(63, round(63 scale_j /
    max scale)), m_j likewise with the mins; L = clamp(round((x + dmin m_j) / (d sc_j)), 0, nmax)
    (sub-blocks with d sc_j == 0 keep the search's L)."""
    n, k = w.shape
    nb = k // QK_K
    x = w.reshape(n * nb * 8, 32)  # sub-blocks
    av_x = torch.sqrt(x.square().sum(-1) / 32)
    weights = av_x[:, None] + x.abs()
    scales, mins, L = _search_scale_min(x, weights, nmax, rmin, nstep)

    scales = scales.view(n * nb, 8)
    mins = mins.view(n * nb, 8)
    max_scale = scales.amax(-1).clamp(min=0.0)
    max_min = mins.amax(-1).clamp(min=0.0)
    inv_scale = torch.where(max_scale > 0, 63.0 / max_scale, torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, 63.0 / max_min, torch.zeros_like(max_min))
    ls = _nearest_u8(inv_scale[:, None] * scales).clamp(max=63)  # [R, 8]
    lm = _nearest_u8(inv_min[:, None] * mins).clamp(max=63)
    d = (max_scale / 63.0).to(torch.float16)  # [R]
    dmin = (max_min / 63.0).to(torch.float16)

    d_sc = (d.to(torch.float32)[:, None] * ls.to(torch.float32)).reshape(-1, 1)  # [R*8, 1]
    dmin_m = (dmin.to(torch.float32)[:, None] * lm.to(torch.float32)).reshape(-1, 1)
    Lq = torch.round((x + dmin_m) / d_sc).clamp(0, nmax).to(torch.uint8)
    L = torch.where(d_sc == 0, L, Lq)
    return L.view(n * nb, 8, 32), torch.stack([ls, lm], dim=-1), torch.stack([d, dmin], dim=-1)


def kquant_head(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """The fields that open a Q4_K / Q5_K block: blocks uint8 [N, nb, B] -> the planes sm uint8
    [N, 16 nb] (sc_j, m_j interleaved, unpacked) and dm float16 [N, 2 nb] (d, dmin)."""
    n = blocks.shape[0]
    sc, m = _unpack_scale_min(blocks[..., 4:16])  # [N, nb, 8] each
    return torch.stack([sc, m], dim=-1).reshape(n, -1), f16_field(blocks, 0, 2).reshape(n, -1)


def kquant_head_bytes(sm: Tensor, dm: Tensor, n: int, nb: int) -> Tensor:
    """The inverse of kquant_head: -> uint8 [N, nb, 16] (d, dmin, the 12 packed scale bytes)."""
    sm = sm.view(n, nb, 8, 2)
    return torch.cat([dm.view(n, nb, 2).view(torch.uint8), _pack_scale_min(sm[..., 0], sm[..., 1])], dim=-1)


def kquant_codes(q: Tensor, sm: Tensor, dm: Tensor, n: int, k: int) -> Codes:
    """Codes of a Q4_K / Q5_K weight: its codes q [N, nb, 8, 32] (< 32), planes sm, dm ->
    w = (d sc_j) q - (dmin m_j) per sub-block j."""
    nb = k // QK_K
    sm = sm.view(n, nb, 8, 2).to(torch.float32)
    dm = dm.view(n, nb, 2).to(torch.float32)
    d_sc = dm[..., 0:1] * sm[..., 0]  # [N, nb, 8]
    dmin_m = dm[..., 1:2] * sm[..., 1]  # [N, nb, 8]
    return Codes(q.to(torch.int8).reshape(n, k), d_sc.reshape(n, nb * 8), dmin_m.reshape(n, nb * 8))


class Q4KFormat(WeightFormat):
    plane_specs = plane_table(qs=(torch.uint8, QK_K // 2), sm=(torch.uint8, 16), dm=(torch.float16, 2))
    code_group = 32
    code_offset = True

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 144]
        sm, dm = kquant_head(blocks)
        return blocks[..., 16:].reshape(blocks.shape[0], -1), sm, dm

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, sm, dm = planes
        nb = k // QK_K
        return torch.cat([kquant_head_bytes(sm, dm, n, nb), qs.view(n, nb, QK_K // 2)], dim=-1)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        qs, sm, dm = planes
        return kquant_codes(unpack_nibbles(qs.view(n, k // QK_K, QK_K // 2)), sm, dm, n, k)

    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        L, sm, dm = quantize_scale_min(w, nmax=15, rmin=-1.0, nstep=20)
        qs = pack_nibbles(L)  # [R, 128]
        return qs.reshape(n, -1), sm.reshape(n, -1), dm.reshape(n, -1)


Q4_K = register(Q4KFormat(name="q4_k", block_size=QK_K, ggml_type=GGMLQuantizationType.Q4_K, type_size=144))
