"""Random planes of any format, for tests and benchmarks (every bit pattern of the quant bytes,
scales small enough that outputs stay finite). Timings don't depend on values, except that zeros
must be avoided: these are never all zero."""

from __future__ import annotations

import torch

from ..quant.formats import FORMATS


def random_planes(fmt: str, N: int, K: int, device="cpu", seed: int = 0) -> list[torch.Tensor]:
    f = FORMATS[fmt]
    g = torch.Generator(device=device).manual_seed(seed)
    planes = []
    for spec, shape in zip(f.plane_specs, f.plane_shapes(N, K)):
        if spec.dtype == torch.float16:
            if spec.name == "zero":
                p = torch.rand(shape, generator=g, device=device) * 15
            else:
                p = torch.rand(shape, generator=g, device=device) * 0.02 + 1e-3
            planes.append(p.half())
        elif spec.dtype == torch.uint8:
            hi = 64 if spec.name == "sm" else 256
            planes.append(torch.randint(0, hi, shape, generator=g, device=device, dtype=torch.uint8))
        else:
            planes.append(torch.randint(-128, 128, shape, generator=g, device=device, dtype=torch.int8))
    return planes
