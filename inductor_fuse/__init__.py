"""inductor_fuse: Inductor rules that fuse int4 LLM inference graphs into Triton kernels.

model = torch.compile(model, backend="inductor_fuse")
inductor_fuse.last_report().counts   # {"siblings": 64, ...}

The ops in two layers:
    quant      weight formats, QuantizedLinear, the op torch.ops.inductor_fuse.qlinear (pure torch)
    attention, conv1d, glu, rope_cache
               the ops decode_attention, depthwise_conv1d, glu_linear, rope_cache_write (pure torch)
    kernels    Triton kernels; kernels/ops.py, decode_attention.py, conv1d.py, glu_linear.py and
               rope_cache.py register them as the ops' CUDA implementations
kernels imports quant and the op modules, never the reverse (tests/quant/test_layering.py). Importing
the package imports all three, so each op always has its CUDA kernel.
"""

from . import backend as _backend
from .backend import inductor_fuse_backend, make_backend
from .gguf import load_gguf
from .kernels import conv1d as _conv1d_kernel  # noqa: F401 -- registers depthwise_conv1d's CUDA implementation
from .kernels import decode_attention as _attention_kernel  # noqa: F401 -- registers decode_attention's CUDA implementation
from .kernels import glu_linear as _glu_linear_kernel  # noqa: F401 -- registers glu_linear's CUDA implementation
from .kernels import ops as _kernel_ops  # noqa: F401 -- registers qlinear's CUDA implementation
from .kernels import rope_cache as _rope_cache_kernel  # noqa: F401 -- registers rope_cache_write's CUDA implementation
from .options import FuseOptions
from .patterns.registry import family_names
from .quant import QuantConfig, QuantizedLinear, QuantizedWeight, quantize, quantize_
from .report import FusionReport, all_reports, clear_reports, last_report, total_counts

FAMILIES = family_names()  # the registered rule families, in the order their passes run
_backend.register_without_entry_point()  # a source tree on PYTHONPATH: the name without the entry point

__all__ = [
    "FAMILIES",
    "FuseOptions",
    "FusionReport",
    "QuantConfig",
    "QuantizedLinear",
    "QuantizedWeight",
    "all_reports",
    "clear_reports",
    "inductor_fuse_backend",
    "last_report",
    "load_gguf",
    "make_backend",
    "quantize",
    "quantize_",
    "total_counts",
]
