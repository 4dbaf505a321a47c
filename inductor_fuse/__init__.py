"""inductor_fuse: Inductor rules that fuse int4 LLM inference graphs into Triton kernels.

model = torch.compile(model, backend="inductor_fuse")
inductor_fuse.last_report().counts   # {"siblings": 64, ...}
"""

from .backend import inductor_fuse_backend, make_backend
from .gguf import load_gguf
from .options import FAMILIES, FuseOptions
from .quant import QuantConfig, QuantizedLinear, QuantizedWeight, quantize, quantize_
from .report import FusionReport, all_reports, clear_reports, last_report, total_counts

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
