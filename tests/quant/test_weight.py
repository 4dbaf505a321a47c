"""QuantizedWeight: GGUF loading (real file and one we write), device moves, size, repr."""

from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from inductor_fuse.quant import FORMATS, QuantizedWeight, quantize

from .conftest import GEMMA_FORMATS, GGUF_FORMATS, assert_bits_equal


def _smallest_2d(tensors, ggml_type):
    ts = [t for t in tensors if t.tensor_type == ggml_type and len(t.shape) == 2]
    return min(ts, key=lambda t: int(t.n_bytes))


@pytest.mark.parametrize("name", GEMMA_FORMATS)
def test_from_gguf_gemma(gemma_tensors, name):
    f = FORMATS[name]
    t = _smallest_2d(gemma_tensors, f.ggml_type)
    qw = QuantizedWeight.from_gguf(t)
    k, n = (int(d) for d in t.shape)  # GGUF: innermost (K) first
    assert qw.shape == (n, k) and qw.fmt == name
    # q4_k's sm plane holds the 12 packed scale bytes of a block unpacked to 16
    plane_bytes, gguf_bytes = {"q4_k": (148, 144)}.get(name, (1, 1))
    assert qw.nbytes * gguf_bytes == int(t.n_bytes) * plane_bytes
    assert torch.equal(qw.to_gguf_bytes(), torch.from_numpy(np.array(t.data)))
    if n * k <= 1 << 20:
        assert_bits_equal(qw.dequantize(), gguf.quants.dequantize(np.array(t.data), t.tensor_type))


def test_from_gguf_rejects_dense_and_unknown_types(gemma_tensors):
    f32 = next(t for t in gemma_tensors if t.tensor_type == gguf.GGMLQuantizationType.F32)
    with pytest.raises(ValueError, match=r"is F32, a dense type"):
        QuantizedWeight.from_gguf(f32)
    fake = SimpleNamespace(name="w", tensor_type=gguf.GGMLQuantizationType.Q3_K, shape=[256, 2], data=None)
    with pytest.raises(ValueError, match=r"unsupported ggml type Q3_K \(supported: \["):
        QuantizedWeight.from_gguf(fake)


@pytest.mark.parametrize("name", GGUF_FORMATS)
def test_gguf_writer_round_trip(tmp_path, name):
    # quantize -> to_gguf_bytes -> GGUFWriter -> GGUFReader -> from_gguf gives the same planes
    f = FORMATS[name]
    w = torch.randn(37, 512, generator=torch.Generator().manual_seed(5))
    qw = quantize(w, name)
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(path, "test")
    writer.add_tensor("w", qw.to_gguf_bytes().numpy(), raw_dtype=f.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    t = gguf.GGUFReader(path).tensors[0]
    assert [int(d) for d in t.shape] == [512, 37]
    back = QuantizedWeight.from_gguf(t)
    assert back.shape == (37, 512)
    assert all(torch.equal(a, b) for a, b in zip(back.planes, qw.planes))


def test_to_nbytes_repr():
    qw = quantize(torch.randn(8, 256), "q4_k")
    assert qw.nbytes == 8 * (128 + 16 + 4)  # qs, sm (unpacked), dm
    moved = qw.to("cpu")
    assert moved.shape == qw.shape and all(torch.equal(a, b) for a, b in zip(moved.planes, qw.planes))
    assert repr(qw) == "QuantizedWeight(fmt='q4_k', shape=(8, 256), device=cpu, nbytes=1184, bits_per_weight=4.62)"
