"""Repack + dequantization of the GGUF formats, bit-exact against gguf.quants.dequantize."""

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inductor_fuse.quant import FORMATS

from .conftest import GEMMA_FORMATS, GGUF_FORMATS, assert_bits_equal, random_gguf_bytes


@pytest.mark.parametrize("name", GGUF_FORMATS)
@pytest.mark.parametrize("n, k", [(1, 256), (37, 512), (5, 1024)])
def test_dequantize_random_blocks(name, n, k):
    f = FORMATS[name]
    raw = random_gguf_bytes(f, n, k, seed=n + k)
    ref = gguf.quants.dequantize(raw.numpy(), f.ggml_type)
    assert_bits_equal(f.dequantize(f.from_gguf_bytes(raw)), ref)


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_codes_are_the_weights_of_gguf(name):
    """The int8 code form (what dequant_cpu's one-row matvec reads): scale * q - offset per group,
    in float32 in that order, gives gguf's dequantized weights bit for bit."""
    f = FORMATS[name]
    n, k = 7, 512
    raw = random_gguf_bytes(f, n, k, seed=5)
    c = f.codes(f.from_gguf_bytes(raw))
    g = f.code_group
    assert (c.q.dtype, tuple(c.q.shape), c.group) == (torch.int8, (n, k), g)
    assert (c.scale.dtype, tuple(c.scale.shape)) == (torch.float32, (n, k // g))
    assert (c.offset is not None) == f.code_offset
    w = c.scale[..., None] * c.q.view(n, k // g, g).float()
    if c.offset is not None:
        w = w - c.offset[..., None]
    assert_bits_equal(w.reshape(n, k), gguf.quants.dequantize(raw.numpy(), f.ggml_type))


def test_a_format_without_codes_says_so():
    f = FORMATS["int4_g32"]
    assert f.code_group is None
    with pytest.raises(ValueError, match="no int8 code form"):
        f.codes(f.quantize(torch.randn(4, 64)))


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_gguf_bytes_round_trip(name):
    f = FORMATS[name]
    raw = torch.randint(0, 256, (37, f.row_bytes(512)), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    planes = f.from_gguf_bytes(raw)
    assert torch.equal(f.to_gguf_bytes(planes), raw)


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_plane_layout(name):
    # the contract table of docs/design.md: dtypes, shapes, contiguity, leading dim N
    f = FORMATS[name]
    n, k = 3, 512
    expected = {
        "q4_k": [(torch.uint8, k // 2), (torch.uint8, k // 16), (torch.float16, 2 * k // 256)],
        "q6_k": [(torch.uint8, k // 2), (torch.uint8, k // 4), (torch.int8, k // 16), (torch.float16, k // 256)],
        "q5_0": [(torch.uint8, k // 2), (torch.uint8, k // 8), (torch.float16, k // 32)],
        "iq4_nl": [(torch.uint8, k // 2), (torch.float16, k // 32)],
        "q4_1": [(torch.uint8, k // 2), (torch.float16, 2 * k // 32)],
        "q5_1": [(torch.uint8, k // 2), (torch.uint8, k // 8), (torch.float16, 2 * k // 32)],
        "q5_k": [(torch.uint8, k // 2), (torch.uint8, k // 16), (torch.float16, 2 * k // 256), (torch.uint8, k // 8)],
        "q8_0": [(torch.int8, k), (torch.float16, k // 32)],
        "q4_0": [(torch.uint8, k // 2), (torch.float16, k // 32)],
        "iq4_xs": [(torch.uint8, k // 2), (torch.int8, k // 32), (torch.float16, k // 256)],
    }[name]
    planes = f.from_gguf_bytes(random_gguf_bytes(f, n, k))
    assert [(p.dtype, tuple(p.shape)) for p in planes] == [(dt, (n, w)) for dt, w in expected]
    assert all(p.is_contiguous() for p in planes)
    assert (f.block_size, f.type_size) == gguf.GGML_QUANT_SIZES[f.ggml_type]


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_concat_along_n_is_plane_cat(name):
    # the sibling-fusion invariant: cat of planes along dim 0 == cat of weights along N
    f = FORMATS[name]
    a = f.from_gguf_bytes(random_gguf_bytes(f, 5, 512, seed=2))
    b = f.from_gguf_bytes(random_gguf_bytes(f, 3, 512, seed=3))
    cat = f.dequantize([torch.cat(pair, 0) for pair in zip(a, b)])
    assert torch.equal(cat, torch.cat([f.dequantize(a), f.dequantize(b)], 0))


def test_q4_k_scale_min_unpacking():
    # sm holds the 6-bit sc_j, m_j of get_scale_min_k4, interleaved
    f = FORMATS["q4_k"]
    raw = random_gguf_bytes(f, 4, 256, seed=4)
    _, sm, _ = f.from_gguf_bytes(raw)
    s = raw[:, 4:16].to(torch.int64)
    for j in range(8):
        if j < 4:
            sc, m = s[:, j] & 63, s[:, j + 4] & 63
        else:
            sc = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            m = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
        assert torch.equal(sm[:, 2 * j].to(torch.int64), sc)
        assert torch.equal(sm[:, 2 * j + 1].to(torch.int64), m)


def _first_tensor(tensors, ggml_type):
    return next(t for t in tensors if t.tensor_type == ggml_type and len(t.shape) == 2)


@pytest.mark.parametrize("name", GEMMA_FORMATS)
def test_dequantize_gemma_tensor(gemma_tensors, name):
    f = FORMATS[name]
    t = _first_tensor(gemma_tensors, f.ggml_type)
    rows = np.array(t.data[:300], dtype=np.uint8)  # a slice of rows keeps it fast
    raw = torch.from_numpy(rows)
    planes = f.from_gguf_bytes(raw)
    assert torch.equal(f.to_gguf_bytes(planes), raw)
    assert_bits_equal(f.dequantize(planes), gguf.quants.dequantize(rows, f.ggml_type))


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(GGUF_FORMATS), n=st.integers(1, 40), blocks=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_any_shape_round_trip_and_bit_exact(name, n, blocks, seed):
    f = FORMATS[name]
    k = blocks * max(f.block_size, 64)
    raw = random_gguf_bytes(f, n, k, seed=seed)
    planes = f.from_gguf_bytes(raw)
    assert torch.equal(f.to_gguf_bytes(planes), raw)
    assert_bits_equal(f.dequantize(planes), gguf.quants.dequantize(raw.numpy(), f.ggml_type))
