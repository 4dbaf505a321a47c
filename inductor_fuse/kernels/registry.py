"""The registry of kernels: KERNELS (quant.FORMATS key -> KernelSpec), the mirror of quant.FORMATS
for the formats that have Triton kernels.

Each format's kernels live in their own file (kernels/<fmt>.py), which builds its KernelSpec (defined
in _common.py, next to MatvecConfig, so that the format files import it from there; re-exported
here) and registers it: ``(SPEC,) = register_kernels(KernelSpec(...))``. Adding a format's kernels:
its file, and its name in the import line below.

    KERNELS["q4_k"].matvec_max_m            # 4: act_quant + matvec up to M = 4
    kernel_spec(fmt)                        # the same, or an error naming the formats with kernels
"""

from __future__ import annotations

from . import int4, iq4_nl, iq4_xs, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0  # noqa: F401 -- importing a kernel file registers it
from ._common import KERNELS, KernelSpec

__all__ = ["KERNELS", "KernelSpec", "kernel_spec"]


def kernel_spec(fmt: str) -> KernelSpec:
    """KERNELS[fmt]; NotImplementedError naming the formats with kernels when fmt has none."""
    try:
        return KERNELS[fmt]
    except KeyError:
        raise NotImplementedError(
            f"no Triton kernels for weight format {fmt!r}; formats with kernels: {sorted(KERNELS)}"
        ) from None
