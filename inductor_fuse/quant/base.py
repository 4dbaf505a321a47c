"""The base of every weight format: PlaneSpec and the abstract WeightFormat.

A weight format says how a weight [N, K] is stored as a tuple of planes. Every plane is a
contiguous 2-D tensor whose leading dimension is N (one row of every plane per output row), so two
weights of one format and one K concatenate along N plane by plane with `torch.cat(plane, 0)`. The
exact plane layouts are the contract table in docs/design.md.

A format describes each plane by (name, dtype, elements per block): a weight with K columns has
K / block_size blocks per row, so plane p has width (K / block_size) * per_block[p]. That one
table drives all shape / dtype validation here; the format files (q4_k.py, int4.py, ...) subclass
WeightFormat and only hold the bit math. formats.py registers them.

    FORMATS["q4_k"].dequantize(planes)      # float32 [N, K], bit-exact with gguf.quants
    FORMATS["q4_k"].codes(planes)           # Codes(q int8 [N, K], scale, offset): w = scale q - offset
    FORMATS["q4_k"].quantize(w)             # planes, llama.cpp's reference search
    FORMATS["q4_k"].from_gguf_bytes(raw)    # uint8 [N, row_bytes] -> planes (and back)

Everything is plain torch and runs on the tensors' device. Eager dequantization is bit-exact on
CPU and CUDA alike (checked on an H200); under torch.compile, Inductor may fuse `a * q - b` into
an FMA, which is close but not bit-exact. Quantizing on CUDA can differ from CPU in a few
rounding ties (reduction order, division by reciprocal); both give valid, equally good weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from gguf import GGMLQuantizationType
from torch import Tensor

_QUANTIZE_CHUNK_ELEMS = 1 << 22


class Codes(NamedTuple):
    """A weight as int8 codes and float32 factors per group of `group` weights along K:
    w[n, k] = scale[n, k // group] * q[n, k] - offset[n, k // group], in float32, this op order
    (no offset: the product alone). Every GGUF format but the affine int4 has this form; it is how
    they dequantize (`codes_to_float`), so the two agree bit for bit."""

    q: Tensor  # int8 [N, K]
    scale: Tensor  # float32 [N, K / group]
    offset: Tensor | None  # float32 [N, K / group], or None

    @property
    def group(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]


def codes_to_float(c: Codes) -> Tensor:
    """float32 [N, K] = scale * q (- offset), one float32 [N, K] allocated."""
    n, k = c.q.shape
    w = c.q.to(torch.float32)
    groups = w.view(n, k // c.group, c.group)
    groups.mul_(c.scale[..., None])
    if c.offset is not None:
        groups.sub_(c.offset[..., None])
    return w


class PlaneSpec(NamedTuple):
    name: str
    dtype: torch.dtype
    per_block: int  # plane elements per block of `block_size` weights (per row)


def plane_table(**planes: tuple[torch.dtype, int]) -> tuple[PlaneSpec, ...]:
    """A format's planes in order, name=(dtype, per_block): e.g. Q4_0's
    ``plane_table(qs=(torch.uint8, 16), d=(torch.float16, 1))``."""
    return tuple(PlaneSpec(name, dtype, per_block) for name, (dtype, per_block) in planes.items())


@dataclass(frozen=True)
class WeightFormat(ABC):
    name: str  # registry key, e.g. "q4_k"
    block_size: int  # K granularity: K must be a multiple of this
    ggml_type: GGMLQuantizationType | None = None  # None: not a GGUF type
    type_size: int | None = None  # GGUF bytes per block (GGUF types only)

    # ---- what a format file implements -------------------------------------------------------

    # plane_specs: tuple[PlaneSpec, ...], a class attribute (a property where it depends on the instance)
    plane_specs: ClassVar[tuple[PlaneSpec, ...]]
    # the Codes form (a format with one implements _codes and inherits _dequantize): weights per
    # scale, and whether there is an offset; None: no such form (it implements _dequantize)
    code_group: ClassVar[int | None] = None
    code_offset: ClassVar[bool] = False
    codes_plane: ClassVar[int | None] = None  # the plane that holds the int8 codes as they are (Q8_0's qs)

    def _codes(self, planes: tuple[Tensor, ...], n: int, k: int) -> Codes:
        raise ValueError(f"{self.name}: no int8 code form")

    def _dequantize(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        return codes_to_float(self._codes(planes, n, k))

    @abstractmethod
    def _quantize(self, w: Tensor) -> tuple[Tensor, ...]: ...

    def _from_blocks(self, blocks: Tensor) -> tuple[Tensor, ...]:
        # blocks: uint8 [N, K/block_size, type_size] -> planes
        raise ValueError(f"{self.name}: not a GGUF type, it has no GGUF byte encoding")

    def _to_blocks(self, planes: tuple[Tensor, ...], n: int, k: int) -> Tensor:
        # planes -> uint8 [N, K/block_size, type_size]
        raise ValueError(f"{self.name}: not a GGUF type, it has no GGUF byte encoding")

    # ---- public API, validated ----------------------------------------------------------------

    def dequantize(self, planes: Sequence[Tensor]) -> Tensor:
        """planes -> float32 [N, K] (on the planes' device)."""
        planes, n, k = self.check_planes(planes)
        return self._dequantize(planes, n, k)

    def codes(self, planes: Sequence[Tensor]) -> Codes:
        """planes -> Codes (int8 codes, float32 scales and offsets); ValueError for a format
        without that form (code_group None)."""
        planes, n, k = self.check_planes(planes)
        return self._codes(planes, n, k)

    def quantize(self, w: Tensor) -> tuple[Tensor, ...]:
        """w: float [N, K] -> planes (computed in float32 on w's device)."""
        self.check_weight(w)
        w = w.detach().to(torch.float32).contiguous()
        # The search quantizers hold a few [rows, K] temporaries per step: bound them by chunking
        # rows (planes lead with N, so chunks concatenate along dim 0).
        rows = max(1, _QUANTIZE_CHUNK_ELEMS // w.shape[1])
        chunks = [self._quantize(c) for c in w.split(rows, dim=0)]
        return tuple(torch.cat(ps, dim=0).contiguous() for ps in zip(*chunks))

    def from_gguf_bytes(self, raw: Tensor) -> tuple[Tensor, ...]:
        """raw: uint8 [N, row_bytes] (GGUF rows) -> planes."""
        if self.type_size is None:
            raise ValueError(f"{self.name}: not a GGUF type, it has no GGUF byte encoding")
        if not isinstance(raw, Tensor) or raw.dtype != torch.uint8 or raw.dim() != 2:
            got = f"{raw.dtype} tensor of {raw.dim()} dims" if isinstance(raw, Tensor) else type(raw).__name__
            raise ValueError(f"{self.name}: GGUF bytes must be a uint8 tensor [N, row_bytes], got {got}")
        n, row_bytes = raw.shape
        if row_bytes % self.type_size != 0:
            raise ValueError(
                f"{self.name}: row_bytes must be a multiple of the block's {self.type_size} bytes, got {row_bytes}"
            )
        blocks = raw.contiguous().view(n, row_bytes // self.type_size, self.type_size)
        return tuple(p.contiguous() for p in self._from_blocks(blocks))

    def to_gguf_bytes(self, planes: Sequence[Tensor]) -> Tensor:
        """planes -> uint8 [N, row_bytes], the GGUF encoding of the weight."""
        planes, n, k = self.check_planes(planes)
        return self._to_blocks(planes, n, k).reshape(n, -1).contiguous()

    # ---- validation ----------------------------------------------------------------------------

    def row_bytes(self, k: int) -> int:
        if self.type_size is None:
            raise ValueError(f"{self.name}: not a GGUF type, it has no GGUF byte encoding")
        self.check_k(k)
        return k // self.block_size * self.type_size

    def plane_shapes(self, n: int, k: int) -> tuple[tuple[int, int], ...]:
        self.check_k(k)
        return tuple((n, k // self.block_size * p.per_block) for p in self.plane_specs)

    def check_k(self, k: int) -> None:
        if k <= 0 or k % self.block_size != 0:
            raise ValueError(f"{self.name}: K must be a positive multiple of {self.block_size}, got K={k}")

    def check_weight(self, w: Tensor) -> None:
        if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
            got = f"{w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"{self.name}: expected a floating-point weight [N, K], got {got}")
        self.check_k(w.shape[1])

    def check_planes(self, planes: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], int, int]:
        """Validate planes against the format's table; returns (planes, N, K)."""
        planes = tuple(planes)
        names = [p.name for p in self.plane_specs]
        if len(planes) != len(self.plane_specs):
            raise ValueError(f"{self.name}: expected {len(self.plane_specs)} planes {names}, got {len(planes)}")
        for spec, p in zip(self.plane_specs, planes):
            if not isinstance(p, Tensor) or p.dim() != 2:
                got = f"{p.dim()}-D tensor" if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(f"{self.name}: plane {spec.name!r} must be a 2-D tensor, got {got}")
            if p.dtype != spec.dtype:
                raise ValueError(f"{self.name}: plane {spec.name!r} must be {spec.dtype}, got {p.dtype}")
        first = self.plane_specs[0]
        n, width = planes[0].shape
        k = width // first.per_block * self.block_size
        if width % first.per_block != 0 or k == 0:
            raise ValueError(
                f"{self.name}: plane {first.name!r} width must be a positive multiple of {first.per_block}, got {width}"
            )
        expected = self.plane_shapes(n, k)
        got = tuple(tuple(p.shape) for p in planes)
        if got != expected:
            raise ValueError(
                f"{self.name}: plane shapes for a weight [{n}, {k}] must be "
                f"{dict(zip(names, expected))}, got {dict(zip(names, got))}"
            )
        return tuple(p.contiguous() for p in planes), n, k


FORMATS: dict[str, WeightFormat] = {}  # name -> format; filled by register(), read via quant.formats


def register(fmt: WeightFormat) -> WeightFormat:
    """Add ``fmt`` to FORMATS (a format file's constructor line: ``Q4_0 = register(Q40Format(...))``)."""
    if fmt.name in FORMATS:
        raise ValueError(f"weight format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def f16_field(blocks: Tensor, start: int, count: int = 1) -> Tensor:
    """The `count` float16 values stored at byte `start` of each GGUF block: blocks uint8 [..., B] -> [..., count]."""
    return blocks[..., start : start + 2 * count].contiguous().view(torch.float16)


def absmax_quantize(x: Tensor, half: int) -> tuple[Tensor, Tensor]:
    """llama.cpp's reference rounding of Q4_0 (half = 8) and Q5_0 (half = 16) on blocks x [..., QK].

    quantize_row_q{4,5}_0_ref (ggml-quants.c): max = the block's signed absmax (starting from +0, so
    an all-zero block gets d = -0), d = max / -half, id = 1/d (0 if d == 0),
    q = min(2 half - 1, trunc(x id + half + 0.5)): x id is in [-half, half], so this rounds half up
    and the max maps to q = 0. Returns (q uint8 [..., QK], d float32 [..., 1]).
    """
    mx = x.gather(-1, x.abs().argmax(-1, keepdim=True))
    mx = torch.where(mx == 0, torch.zeros_like(mx), mx)
    d = mx / -half
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.trunc(x * inv + (half + 0.5)).clamp(0, 2 * half - 1).to(torch.uint8)
    return q, d


def minmax_quantize(x: Tensor, nmax: int) -> tuple[Tensor, Tensor, Tensor]:
    """llama.cpp's reference rounding of Q4_1 (nmax = 15) and Q5_1 (nmax = 31) on blocks x [..., QK].

    quantize_row_q{4,5}_1_ref (ggml-quants.c): min, max of the block, d = (max - min) / nmax,
    id = 1/d (0 if d == 0), q = min(nmax, trunc((x - min) id + 0.5)). Returns (q uint8 [..., QK],
    d float32 [..., 1], min float32 [..., 1]); w = d q + min.
    """
    mn = x.amin(-1, keepdim=True)
    d = (x.amax(-1, keepdim=True) - mn) / nmax
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.trunc((x - mn) * inv + 0.5).clamp(0, nmax).to(torch.uint8)
    return q, d, mn


def split_nibbles(qs: Tensor) -> Tensor:
    """uint8 [..., 16] -> [..., 32]: a 32-block's codes, low nibbles first (elements 0-15), then high."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def join_nibbles(q: Tensor) -> Tensor:
    """uint8 [..., 32] of 4-bit codes -> [..., 16]; the inverse of split_nibbles."""
    return q[..., :16] | (q[..., 16:] << 4)


def unpack_int4(qs: Tensor) -> Tensor:
    """uint8 [..., K/2] -> [..., K]: byte i holds element 2i in its low nibble, 2i+1 in its high."""
    return torch.stack([qs & 0xF, qs >> 4], dim=-1).flatten(-2)


def pack_int4(q: Tensor) -> Tensor:
    """Integer [..., K] of 4-bit values -> [..., K/2] (same dtype); the inverse of unpack_int4."""
    return q[..., 0::2] | (q[..., 1::2] << 4)
