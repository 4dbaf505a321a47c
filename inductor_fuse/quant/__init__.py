"""Weight formats (Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_XS, IQ4_NL, group int4), their
quantizers, QuantizedLinear, and the op it calls, torch.ops.inductor_fuse.qlinear (its pure-torch
body; the CUDA kernels register on it from inductor_fuse.kernels, which this package never imports).

from inductor_fuse.quant import quantize_, QuantConfig
quantize_(model, QuantConfig(fmt="q4_k"))

Layers, each importing only those before it: base (PlaneSpec, WeightFormat) <- the format files
(q4_k.py, ...) <- formats (the FORMATS registry) <- weight, op <- linear.
"""

from .formats import FORMATS, WeightFormat
from .linear import QuantConfig, QuantizedLinear, quantize_
from .weight import QuantizedWeight, quantize

__all__ = ["FORMATS", "WeightFormat", "QuantizedWeight", "quantize", "QuantizedLinear", "quantize_", "QuantConfig"]
