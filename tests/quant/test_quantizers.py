"""Quantizers: quality (SQNR vs float), agreement with gguf.quants, valid GGUF bytes, edge cases."""

import gguf
import numpy as np
import pytest
import torch

from inductor_fuse.quant import FORMATS, quantize

from .conftest import GGUF_FORMATS, assert_bits_equal


def sqnr(w: torch.Tensor, wq: torch.Tensor) -> float:
    # 10 log10(sum w^2 / sum (w - wq)^2), in dB
    return (10 * torch.log10(w.square().sum() / (w - wq).square().sum())).item()


@pytest.fixture(scope="module")
def randn_rows():
    return torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))


# llama.cpp's reference quantizers reach 22.90 dB (Q4_K), 28.84 dB (Q5_K) and 35.02 dB (Q6_K) on
# these rows;
# Q5_0 / Q8_0 / Q4_1 / Q5_1 are llama.cpp's exact algorithms; int4 thresholds are the measured values - 0.1 dB.
MIN_SQNR = {
    "q4_k": 22.8,
    "q5_k": 28.7,
    "q6_k": 34.9,
    "q5_0": 27.2,
    "q4_1": 22.0,
    "iq4_nl": 22.2,
    "q5_1": 28.3,
    "q8_0": 45.2,
    "int4_g32": 22.0,
    "int4_g64": 20.8,
    "int4_g128": 19.9,
}


@pytest.mark.parametrize("name", list(MIN_SQNR))
def test_sqnr(randn_rows, name):
    qw = quantize(randn_rows, name)
    db = sqnr(randn_rows, qw.dequantize())
    print(f"{name}: SQNR {db:.3f} dB")
    assert db >= MIN_SQNR[name], f"{name}: SQNR {db:.3f} dB < {MIN_SQNR[name]} dB"


def test_q8_0_matches_gguf_quantize(randn_rows):
    f = FORMATS["q8_0"]
    ours = f.to_gguf_bytes(f.quantize(randn_rows))
    ref = gguf.quants.quantize(randn_rows.numpy(), f.ggml_type)
    assert np.array_equal(ours.numpy(), ref)


@pytest.mark.parametrize("name", ["q4_1", "q5_1"])
def test_min_formats_match_gguf_quantize(randn_rows, name):
    # llama.cpp's min/max rounding: the same bytes as gguf's port of it
    f = FORMATS[name]
    ours = f.to_gguf_bytes(f.quantize(randn_rows))
    assert np.array_equal(ours.numpy(), gguf.quants.quantize(randn_rows.numpy(), f.ggml_type))


def test_q5_0_matches_gguf_quantize(randn_rows):
    # equal bytes, or at most 1 ulp apart in the fp16 scale (float32 division order)
    f = FORMATS["q5_0"]
    ours = f.to_gguf_bytes(f.quantize(randn_rows)).numpy().reshape(-1, 22)
    ref = gguf.quants.quantize(randn_rows.numpy(), f.ggml_type).reshape(-1, 22)
    d_ours = ours[:, :2].copy().view(np.int16).astype(np.int32)
    d_ref = ref[:, :2].copy().view(np.int16).astype(np.int32)
    assert np.abs(d_ours - d_ref).max() <= 1
    same_d = (d_ours == d_ref)[:, 0]
    assert np.array_equal(ours[same_d], ref[same_d])
    assert same_d.mean() > 0.99


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_quantized_bytes_are_valid_gguf(name):
    # our bytes, decoded by gguf (llama.cpp's layout), equal our own dequantization: the files
    # we write are valid for llama.cpp. Odd N on purpose.
    f = FORMATS[name]
    w = torch.randn(37, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    planes = f.quantize(w)
    raw = f.to_gguf_bytes(planes)
    assert raw.shape == (37, f.row_bytes(512))
    assert_bits_equal(f.dequantize(planes), gguf.quants.dequantize(raw.numpy(), f.ggml_type))
    assert [tuple(p.shape) for p in planes] == list(f.plane_shapes(37, 512))


@pytest.mark.parametrize("name", list(FORMATS))
def test_odd_rows_and_dtypes(name):
    f = FORMATS[name]
    k = 2 * f.block_size if f.block_size >= 256 else 256
    w = torch.randn(37, k, generator=torch.Generator().manual_seed(2))
    planes = f.quantize(w)
    assert all(p.shape[0] == 37 and p.is_contiguous() for p in planes)
    wq = f.dequantize(planes)
    assert wq.shape == (37, k) and wq.dtype == torch.float32
    # bf16 / fp16 weights quantize like their float32 value
    for dt in (torch.bfloat16, torch.float16):
        ref = f.quantize(w.to(dt).float())
        assert all(torch.equal(a, b) for a, b in zip(f.quantize(w.to(dt)), ref))


@pytest.mark.parametrize("name", list(FORMATS))
def test_degenerate_blocks(name):
    # zero rows, constant rows, one spike, tiny and negative-only values: finite and close
    f = FORMATS[name]
    k = 256
    w = torch.zeros(6, k)
    w[1] = 0.5
    w[2] = -0.25
    w[3, 7] = 3.0
    w[4] = torch.linspace(-1e-6, 1e-6, k)
    w[5] = -torch.rand(k, generator=torch.Generator().manual_seed(3)) - 1.0
    wq = f.dequantize(f.quantize(w))
    assert torch.isfinite(wq).all()
    assert torch.equal(wq[0], torch.zeros(k))
    # iq4_xs, iq4_nl: a one-signed block uses half its non-linear grid, whose steps near the ends are 18%
    # of the range: 8.9% here, as llama.cpp
    tol = {"q4_k": 0.08, "q5_k": 0.04, "q6_k": 0.02, "q5_0": 0.05, "q8_0": 0.01, "iq4_xs": 0.09, "iq4_nl": 0.09}.get(
        name, 0.07
    )
    err = (wq - w).abs().amax(-1) / w.abs().amax(-1).clamp(min=1e-30)
    assert (err[1:4] <= tol).all() and err[5] <= tol, err


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_group_math(g):
    # w = (q - zero) * scale with fp16 scale/zero; each weight within half a step (+ fp16 slack)
    f = FORMATS[f"int4_g{g}"]
    w = torch.randn(5, 4 * g, generator=torch.Generator().manual_seed(g))
    qs, scale, zero = f.quantize(w)
    assert qs.shape == (5, 2 * g) and scale.shape == zero.shape == (5, 4)
    assert scale.dtype == zero.dtype == torch.float16
    q = torch.stack([qs & 0xF, qs >> 4], -1).reshape(5, 4, g).float()  # low nibble = even element
    manual = ((q - zero.float()[..., None]) * scale.float()[..., None]).reshape(5, -1)
    assert torch.equal(manual, f.dequantize((qs, scale, zero)))
    step = scale.float().repeat_interleave(g, dim=1)
    assert ((manual - w).abs() <= 0.5 * step + 0.01 * step + 1e-6).all()
    assert (q.amin(-1) == 0).all() and (q.amax(-1) == 15).all()  # min/max map to 0 / 15
