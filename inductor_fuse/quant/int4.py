"""int4_gG: group-wise asymmetric int4 (G = 32, 64, 128 weights per group along K).

Planes for a weight [N, K]:
    qs    uint8   [N, K/2]  byte i = element 2i in the low nibble, element 2i+1 in the high nibble
    scale float16 [N, K/G]
    zero  float16 [N, K/G]  (a real number, not an integer: the group's min sits at q = 0)

Dequantization (float32): w = (q - zero) * scale

Quantization (min/max per group, no search):
    scale = (max - min) / 15, zero = -min / scale        (both rounded to fp16)
    q = clamp(round(w / scale + zero), 0, 15)            (with the fp16 scale and zero)
so min -> q = 0 and max -> q = 15 up to the fp16 rounding of scale and zero. scale is clamped
from below to max(|min|, |max|) / 2^15 (and 2^-24, the smallest fp16 step), so that zero stays
inside fp16 range and a constant group does not divide by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PlaneSpec, WeightFormat, pack_int4, plane_table, register, unpack_int4


class Int4Format(WeightFormat):
    @property
    def plane_specs(self) -> tuple[PlaneSpec, ...]:
        return plane_table(qs=(torch.uint8, self.block_size // 2), scale=(torch.float16, 1), zero=(torch.float16, 1))

    def _dequantize(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        qs, scale, zero = planes
        g = self.block_size
        q = unpack_int4(qs).view(n, k // g, g).to(torch.float32)
        w = (q - zero.to(torch.float32)[..., None]) * scale.to(torch.float32)[..., None]
        return w.reshape(n, k)

    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        n, k = w.shape
        g = self.block_size
        x = w.view(n, k // g, g)
        lo = x.amin(-1)
        hi = x.amax(-1)
        floor = torch.maximum(torch.maximum(lo.abs(), hi.abs()) / 2**15, torch.full_like(lo, 2.0**-24))
        scale = torch.maximum((hi - lo) / 15, floor).to(torch.float16)
        zero = (-lo / scale.to(torch.float32)).to(torch.float16)
        s32, z32 = scale.to(torch.float32)[..., None], zero.to(torch.float32)[..., None]
        q = torch.round(x / s32 + z32).clamp(0, 15).to(torch.uint8)
        return pack_int4(q.view(n, k)), scale, zero


INT4_G32 = register(Int4Format(name="int4_g32", block_size=32))
INT4_G64 = register(Int4Format(name="int4_g64", block_size=64))
INT4_G128 = register(Int4Format(name="int4_g128", block_size=128))
