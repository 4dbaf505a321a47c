"""Q6_K: 256-weight super-blocks of 16 groups of 16, 6-bit signed quants, an int8 scale per group.

GGUF block (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d fp16.
Within each half h of a block (128 weights, ql[64h:64h+64], qh[32h:32h+32]), for l < 32:
    q[l]      = ql[l]      & 15 | (qh[l] >> 0 & 3) << 4
    q[l + 32] = ql[l + 32] & 15 | (qh[l] >> 2 & 3) << 4
    q[l + 64] = ql[l]      >> 4 | (qh[l] >> 4 & 3) << 4
    q[l + 96] = ql[l + 32] >> 4 | (qh[l] >> 6 & 3) << 4

Planes for a weight [N, K] (each block's bytes in GGUF order):
    ql uint8 [N, K/2], qh uint8 [N, K/4], sc int8 [N, K/16], d float16 [N, K/256]

Dequantization (float32, this op order, as gguf.quants):
    w[g, l] = (d * sc_g) * (q[g, l] - 32)
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .base import Codes, WeightFormat, f16_field, plane_table, register

QK_K = 256
GROUP_MAX_EPS = 1e-15


def _unpack_q(ql: Tensor, qh: Tensor) -> Tensor:
    # ql: uint8 [..., 128], qh: uint8 [..., 64] -> q uint8 [..., 256] in 0..63
    ql = ql.unflatten(-1, (2, 64))  # [..., half, 64]
    lo = torch.cat([ql & 0xF, ql >> 4], dim=-1)  # [..., 2, 128]
    qh = qh.unflatten(-1, (2, 1, 32))  # [..., half, 1, 32]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=qh.device).view(4, 1)
    hi = ((qh >> shifts) & 3).flatten(-2)  # [..., 2, 128]
    return (lo | (hi << 4)).flatten(-2)


def _pack_q(q: Tensor) -> tuple[Tensor, Tensor]:
    # q: uint8 [..., 256] in 0..63 -> ql [..., 128], qh [..., 64]; inverse of _unpack_q
    c = q.unflatten(-1, (2, 4, 32))  # [..., half, chunk, 32]
    lo = c & 0xF
    ql = torch.cat([lo[..., 0, :] | (lo[..., 2, :] << 4), lo[..., 1, :] | (lo[..., 3, :] << 4)], dim=-1)
    hi = c >> 4
    qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
    return ql.flatten(-2), qh.flatten(-2)


def _signed_absmax(x: Tensor) -> tuple[Tensor, Tensor]:
    # x: [S, n] -> (amax, the signed value of the first element with |x| = amax), both [S]
    idx = x.abs().argmax(-1, keepdim=True)
    mx = x.gather(-1, idx).squeeze(-1)
    return mx.abs(), mx


# make_qx_quants (ggml-quants.c) with nmax = 32, rmse_type = 1 (weights x^2), vectorised:
#   for iscale = -(nmax + 0.1 s) / max, s = 0, -9..9 (max = signed absmax of the group):
#     l = clamp(round(iscale x), -nmax, nmax - 1)
#     scale = sum(w x l) / sum(w l^2)       (least squares for the fixed l)
#   keep the s that maximises sum(w x l)^2 / sum(w l^2) (= least squared error).
def _search_scale(x: Tensor, nmax: int = 32) -> tuple[Tensor, Tensor]:
    # x: [S, 16] -> scale [S], L uint8 [S, 16] (= l + nmax)
    amax, mx = _signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    w = x * x

    def fit(iscale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        l = torch.round(iscale[:, None] * x).clamp(-nmax, nmax - 1)
        wl = w * l
        return l, (wl * x).sum(-1), (wl * l).sum(-1)

    l, sumlx, suml2 = fit(-nmax / mx)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(suml2))
    best = scale * sumlx
    for s in range(-9, 10):
        if s == 0:
            continue
        num = float(np.float32(nmax) + np.float32(0.1) * np.float32(s))  # float32, as in C
        l_s, sumlx, suml2 = fit(-num / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l = torch.where(better[:, None], l_s, l)
        scale = torch.where(better, sumlx / suml2, scale)
        best = torch.where(better, scale * sumlx, best)

    L = (l + nmax).to(torch.uint8)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero[:, None], torch.zeros_like(L), L)
    return scale, L


class Q6KFormat(WeightFormat):
    plane_specs = plane_table(
        ql=(torch.uint8, QK_K // 2), qh=(torch.uint8, QK_K // 4), sc=(torch.int8, QK_K // 16), d=(torch.float16, 1)
    )
    code_group = 16

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, nb, 210]
        n = blocks.shape[0]
        ql = blocks[..., 0:128]
        qh = blocks[..., 128:192]
        sc = blocks[..., 192:208].contiguous().view(torch.int8)
        d = f16_field(blocks, 208)  # [N, nb, 1]
        return ql.reshape(n, -1), qh.reshape(n, -1), sc.reshape(n, -1), d.reshape(n, -1)

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        ql, qh, sc, d = planes
        nb = k // QK_K
        return torch.cat(
            [
                ql.view(n, nb, 128),
                qh.view(n, nb, 64),
                sc.view(n, nb, 16).view(torch.uint8),
                d.view(n, nb, 1).view(torch.uint8),
            ],
            dim=-1,
        )

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        ql, qh, sc, d = planes
        nb = k // QK_K
        q = _unpack_q(ql.view(n, nb, 128), qh.view(n, nb, 64))  # [N, nb, 256]
        d_sc = d.view(n, nb, 1).to(torch.float32) * sc.view(n, nb, 16).to(torch.float32)  # [N, nb, 16]
        return Codes((q.to(torch.int8) - 32).reshape(n, k), d_sc.reshape(n, nb * 16), None)

    # quantize_row_q6_K_ref (ggml-quants.c), vectorised:
    #   per group g of 16: scale_g = make_qx_quants search (signed: scale_g < 0 when the group's
    #   absmax element is > 0); S = the scale of largest |scale_g|
    #   d = fp16(-S / 128), sc_g = min(127, round(-128 scale_g / S))
    #   L = clamp(round(x / (d sc_g)), -32, 31) + 32   (groups with d sc_g == 0 keep the search's L)
    #   blocks whose |S| < 1e-15 are all zero bytes.
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        nb = k // QK_K
        x = w.reshape(n * nb * 16, 16)  # groups
        scales, L = _search_scale(x)
        scales = scales.view(n * nb, 16)

        _, max_scale = _signed_absmax(scales)  # [R]
        zero = max_scale.abs() < GROUP_MAX_EPS
        max_scale = torch.where(zero, torch.ones_like(max_scale), max_scale)
        iscale = -128.0 / max_scale
        d = torch.where(zero, torch.zeros_like(iscale), 1.0 / iscale).to(torch.float16)  # [R]
        sc = torch.round(iscale[:, None] * scales).clamp(max=127)
        sc = torch.where(zero[:, None], torch.zeros_like(sc), sc).to(torch.int8)  # [R, 16]

        d_sc = (d.to(torch.float32)[:, None] * sc.to(torch.float32)).reshape(-1, 1)  # [R*16, 1]
        Lq = (torch.round(x / d_sc).clamp(-32, 31) + 32).to(torch.uint8)
        L = torch.where(d_sc == 0, L, Lq).view(n * nb, 256)
        L = torch.where(zero[:, None], torch.zeros_like(L), L)

        ql, qh = _pack_q(L)
        return ql.reshape(n, -1), qh.reshape(n, -1), sc.reshape(n, -1), d.reshape(n, -1)


Q6_K = register(Q6KFormat(name="q6_k", block_size=QK_K, ggml_type=GGMLQuantizationType.Q6_K, type_size=210))
