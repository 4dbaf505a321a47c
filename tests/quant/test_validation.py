"""Bad inputs raise ValueError naming the format and what was expected vs got."""

import pytest
import torch

from inductor_fuse.quant import FORMATS, QuantizedWeight, quantize


@pytest.mark.parametrize("name", list(FORMATS))
def test_k_not_multiple_of_block(name):
    f = FORMATS[name]
    with pytest.raises(ValueError, match=rf"{name}: K must be a positive multiple of {f.block_size}, got K=100"):
        f.quantize(torch.randn(4, 100))


@pytest.mark.parametrize("name", ["q4_k", "int4_g64"])
@pytest.mark.parametrize("bad", [torch.zeros(4, 256, dtype=torch.int32), torch.zeros(256), torch.zeros(2, 2, 256)])
def test_bad_weight(name, bad):
    with pytest.raises(ValueError, match=rf"{name}: expected a floating-point weight \[N, K\], got"):
        FORMATS[name].quantize(bad)


@pytest.mark.parametrize("name", list(FORMATS))
def test_bad_planes(name):
    f = FORMATS[name]
    planes = list(f.quantize(torch.randn(4, 256)))
    with pytest.raises(ValueError, match=rf"{name}: expected {len(planes)} planes"):
        f.dequantize(planes[:-1])
    wrong_dtype = planes.copy()
    wrong_dtype[-1] = wrong_dtype[-1].float()
    last = f.plane_specs[-1]
    with pytest.raises(ValueError, match=rf"{name}: plane '{last.name}' must be {last.dtype}, got torch.float32"):
        f.dequantize(wrong_dtype)
    wrong_rows = planes.copy()
    wrong_rows[-1] = wrong_rows[-1][:3]
    with pytest.raises(ValueError, match=rf"{name}: plane shapes for a weight \[4, 256\] must be"):
        f.dequantize(wrong_rows)
    wrong_width = planes.copy()
    wrong_width[1] = torch.cat([wrong_width[1], wrong_width[1]], 1)
    with pytest.raises(ValueError, match=rf"{name}: plane shapes"):
        f.dequantize(wrong_width)
    with pytest.raises(ValueError, match=rf"{name}: plane '\w+' must be a 2-D tensor"):
        f.dequantize([planes[0].flatten(), *planes[1:]])


@pytest.mark.parametrize("name", ["q4_k", "q5_k", "q6_k", "q5_0", "q8_0"])
def test_bad_gguf_bytes(name):
    f = FORMATS[name]
    with pytest.raises(
        ValueError, match=rf"{name}: GGUF bytes must be a uint8 tensor \[N, row_bytes\], got torch.int8"
    ):
        f.from_gguf_bytes(torch.zeros(2, f.type_size, dtype=torch.int8))
    with pytest.raises(ValueError, match=rf"{name}: row_bytes must be a multiple of the block's {f.type_size} bytes"):
        f.from_gguf_bytes(torch.zeros(2, f.type_size + 1, dtype=torch.uint8))


def test_int4_has_no_gguf_encoding():
    f = FORMATS["int4_g32"]
    with pytest.raises(ValueError, match="int4_g32: not a GGUF type"):
        f.from_gguf_bytes(torch.zeros(2, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="int4_g32: not a GGUF type"):
        f.to_gguf_bytes(f.quantize(torch.randn(2, 32)))


def test_unknown_format():
    with pytest.raises(ValueError, match=r"unknown weight format 'q3_k'; valid formats: \['int4_g128'"):
        quantize(torch.randn(2, 256), "q3_k")


def test_weight_shape_mismatch():
    planes = FORMATS["q8_0"].quantize(torch.randn(4, 64))
    with pytest.raises(ValueError, match=r"q8_0: planes hold a weight \[4, 64\], but shape=\(4, 32\)"):
        QuantizedWeight("q8_0", planes, (4, 32))
