"""QuantizedWeight: one weight [N, K] stored in a registered format as a tuple of planes.

qw = QuantizedWeight.from_gguf(reader.tensors[i])   # GGUF tensor of a format in quant.formats
qw = quantize(linear.weight, "q4_k")                # or quantize a float weight
qw.dequantize()                                     # float32 [N, K]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import Tensor

from .formats import FORMATS, GGUF_FORMATS, WeightFormat

_DENSE_GGML_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def get_format(fmt: str) -> WeightFormat:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; valid formats: {sorted(FORMATS)}")
    return FORMATS[fmt]


class QuantizedWeight:
    def __init__(self, fmt: str, planes: Sequence[Tensor], shape: tuple[int, int]):
        self.format = get_format(fmt)
        planes, n, k = self.format.check_planes(planes)
        if tuple(shape) != (n, k):
            raise ValueError(f"{fmt}: planes hold a weight [{n}, {k}], but shape={tuple(shape)}")
        self.fmt = fmt
        self.planes = planes
        self.shape = (n, k)

    @classmethod
    def from_gguf(cls, tensor) -> QuantizedWeight:
        """A gguf.ReaderTensor of a quantized 2-D weight. GGUF lists dims innermost first:
        tensor.shape = (K, N); tensor.data is uint8 [N, row_bytes]."""
        ggml_type = GGMLQuantizationType(tensor.tensor_type)
        name = getattr(tensor, "name", "?")
        if ggml_type in _DENSE_GGML_TYPES:
            raise ValueError(
                f"GGUF tensor {name!r} is {ggml_type.name}, a dense type: load it as a plain tensor, "
                f"not a QuantizedWeight"
            )
        if ggml_type not in GGUF_FORMATS:
            supported = sorted(t.name for t in GGUF_FORMATS)
            raise ValueError(f"GGUF tensor {name!r}: unsupported ggml type {ggml_type.name} (supported: {supported})")
        fmt = GGUF_FORMATS[ggml_type]
        dims = [int(d) for d in tensor.shape]
        if len(dims) != 2:
            raise ValueError(f"GGUF tensor {name!r}: expected a 2-D weight, got GGUF shape {dims} (innermost first)")
        k, n = dims
        raw = torch.from_numpy(np.array(tensor.data, dtype=np.uint8, copy=True)).reshape(n, fmt.row_bytes(k))
        return cls(fmt.name, fmt.from_gguf_bytes(raw), (n, k))

    def to_gguf_bytes(self) -> Tensor:
        """uint8 [N, row_bytes], the GGUF encoding (GGUF formats only)."""
        return self.format.to_gguf_bytes(self.planes)

    def dequantize(self) -> Tensor:
        """float32 [N, K] on the planes' device."""
        return self.format.dequantize(self.planes)

    def to(self, device) -> QuantizedWeight:
        return QuantizedWeight(self.fmt, tuple(p.to(device) for p in self.planes), self.shape)

    @property
    def device(self) -> torch.device:
        return self.planes[0].device

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.planes)

    def __repr__(self) -> str:
        n, k = self.shape
        bits = 8 * self.nbytes / (n * k)
        return (
            f"QuantizedWeight(fmt={self.fmt!r}, shape=({n}, {k}), device={self.device}, "
            f"nbytes={self.nbytes}, bits_per_weight={bits:.3g})"
        )


def quantize(weight: Tensor, fmt: str) -> QuantizedWeight:
    """Quantize a float weight [N, K] into format `fmt` (see FORMATS)."""
    f = get_format(fmt)
    return QuantizedWeight(fmt, f.quantize(weight), tuple(weight.shape))
