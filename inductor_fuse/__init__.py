"""inductor_fuse: Inductor rules that fuse int4 LLM inference graphs into Triton kernels.

    model = torch.compile(model, backend="inductor_fuse")
    inductor_fuse.last_report().counts   # {"siblings": 64, ...}
"""

from .backend import inductor_fuse_backend, make_backend
from .options import FAMILIES, FuseOptions
from .report import FusionReport, all_reports, clear_reports, last_report, total_counts

__all__ = [
    "FAMILIES",
    "FuseOptions",
    "FusionReport",
    "all_reports",
    "clear_reports",
    "inductor_fuse_backend",
    "last_report",
    "make_backend",
    "total_counts",
]
