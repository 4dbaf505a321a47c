"""The registry of weight formats: FORMATS (name -> format) and GGUF_FORMATS (ggml type -> format).

Each format lives in its own file as a subclass of base.WeightFormat, whose instance the file
registers (``Q4_0 = register(Q40Format(...))``); PlaneSpec and WeightFormat are re-exported here.
Adding a format: its file, and its name in the import line below.

    FORMATS["q4_k"].dequantize(planes)      # float32 [N, K]
    GGUF_FORMATS[GGMLQuantizationType.Q4_K] # the same format, looked up by its GGUF type
"""

from __future__ import annotations

from gguf import GGMLQuantizationType

from . import int4, iq4_nl, iq4_xs, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0  # noqa: F401 -- importing a format's file registers it
from .base import FORMATS, PlaneSpec, WeightFormat

__all__ = ["FORMATS", "GGUF_FORMATS", "PlaneSpec", "WeightFormat"]

# ggml type -> format, for GGUF loading
GGUF_FORMATS: dict[GGMLQuantizationType, WeightFormat] = {
    f.ggml_type: f for f in FORMATS.values() if f.ggml_type is not None
}
