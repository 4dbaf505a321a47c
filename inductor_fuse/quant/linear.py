"""QuantizedLinear and the recursive module swap quantize_(model, QuantConfig(...)).

    quantize_(model, QuantConfig(fmt="q4_k", skip=("lm_head",)))
    model = torch.compile(model, backend="inductor_fuse")

QuantizedLinear holds its weight as the format's planes, registered as persistent buffers
plane0..planeN, and calls torch.ops.inductor_fuse.qlinear(x, [plane0, ...], bias, fmt) (op.py): the
pattern rules see one op per linear whose planes they can concatenate along N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .formats import FORMATS
from .op import qlinear
from .weight import QuantizedWeight, get_format, quantize

log = logging.getLogger(__name__)


class QuantizedLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: str,
        planes: Sequence[Tensor] | None = None,
        bias: Tensor | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        f = get_format(fmt)
        if planes is None:  # empty weight, to be filled by load_state_dict
            shapes = f.plane_shapes(out_features, in_features)
            planes = [torch.zeros(s, dtype=p.dtype, device=device) for s, p in zip(shapes, f.plane_specs)]
        planes, n, k = f.check_planes(planes)
        if (n, k) != (out_features, in_features):
            raise ValueError(
                f"{fmt}: planes hold a weight [{n}, {k}], expected [out_features={out_features}, "
                f"in_features={in_features}]"
            )
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.in_features = in_features
        self.out_features = out_features
        self.fmt = fmt
        self.n_planes = len(planes)
        for i, p in enumerate(planes):
            self.register_buffer(f"plane{i}", p)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def planes(self) -> list[Tensor]:
        return [getattr(self, f"plane{i}") for i in range(self.n_planes)]

    @property
    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.fmt, self.planes, (self.out_features, self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., K] -> [..., N] in x.dtype
        return qlinear(x, self.planes, self.bias, self.fmt)

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: str) -> QuantizedLinear:
        qw = quantize(linear.weight, fmt)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(linear.in_features, linear.out_features, fmt, qw.planes, bias)

    @classmethod
    def from_weight(cls, weight: QuantizedWeight, bias: Tensor | None = None) -> QuantizedLinear:
        n, k = weight.shape
        return cls(k, n, weight.fmt, weight.planes, bias)

    def _apply(self, fn: Callable, recurse: bool = True):
        # model.to(dtype) / .half() must not cast the fp16 scale planes: the planes only follow
        # the device (and memory format is irrelevant for 2-D planes); everything else is as usual.
        names = [f"plane{i}" for i in range(self.n_planes)]
        planes = {name: self._buffers.pop(name) for name in names}
        try:
            super()._apply(fn, recurse)
        finally:
            order = names + [k for k in self._buffers if k not in planes]
            for name, p in planes.items():
                self._buffers[name] = p.to(fn(p.new_empty(0)).device)
            buffers = {k: self._buffers[k] for k in order}
            self._buffers.clear()
            self._buffers.update(buffers)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt!r}, "
            f"bias={self.bias is not None}"
        )


@dataclass(frozen=True)
class QuantConfig:
    """fmt: a key of FORMATS; skip: module names (or name suffixes, e.g. "lm_head") left in float."""

    fmt: str = "q4_k"
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"QuantConfig: unknown fmt {self.fmt!r}; valid formats: {sorted(FORMATS)}")
        if isinstance(self.skip, str) or not all(isinstance(s, str) for s in self.skip):
            raise ValueError(f"QuantConfig: skip must be a tuple of module names, got {self.skip!r}")
        object.__setattr__(self, "skip", tuple(self.skip))

    def skips(self, name: str) -> bool:
        return any(name == s or name.endswith("." + s) for s in self.skip)


def quantize_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace every nn.Linear below `model` (recursively, in place) by a QuantizedLinear.

    Linears named in config.skip stay float; so do those whose in_features is not a multiple
    of the format's block (with a warning). The root module itself is never replaced.
    Quantization runs on each weight's device. Returns the model."""
    block = FORMATS[config.fmt].block_size
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear or config.skips(full):
                continue
            if child.in_features % block != 0:
                log.warning(
                    "quantize_: %s left in float: in_features=%d is not a multiple of the %s block (%d)",
                    full,
                    child.in_features,
                    config.fmt,
                    block,
                )
                continue
            setattr(module, child_name, QuantizedLinear.from_float(child, config.fmt))
    return model
