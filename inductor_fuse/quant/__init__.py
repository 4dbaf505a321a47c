"""Weight formats (Q4_K, Q6_K, Q5_0, Q8_0, group int4), their quantizers, QuantizedLinear.

from inductor_fuse.quant import quantize_, QuantConfig
quantize_(model, QuantConfig(fmt="q4_k"))
"""

from .formats import FORMATS, WeightFormat  # first: the format files import WeightFormat from it
from .linear import QuantConfig, QuantizedLinear, quantize_
from .weight import QuantizedWeight, quantize

__all__ = ["FORMATS", "WeightFormat", "QuantizedWeight", "quantize", "QuantizedLinear", "quantize_", "QuantConfig"]
