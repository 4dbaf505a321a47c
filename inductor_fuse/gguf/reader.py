"""Reading a GGUF file: `read_gguf(path)` -> `GGUFFile` (metadata as Python values, tensors as
memory-mapped numpy arrays), with every length checked as it is read.

One walk over the header, the metadata (KV) section and the tensor-info section checks every
length and count against the bytes left in the file and that every tensor's data lies inside the
file, and reads the values as it goes; the tensor data is memory-mapped, not read. A corrupt or
lying file gives a GGUFLoadError naming the file and the cause, never a hang or a crash.
(`gguf.GGUFReader` trusts the header, and builds a numpy view per metadata element: 10-25 s on
a 262k-token vocabulary, against ~0.3 s here.) The tensors are what `gguf.GGUFReader` gives:
`data` of a float / integer type is that dtype in numpy order (dims outermost first), of a
quantized type uint8 [rows, row bytes].

Layout (GGUF v2/v3, little-endian; ggml/docs/gguf.md):

    header        magic b"GGUF", version u32, tensor_count u64, kv_count u64     (24 bytes)
    kv_count x    key string, value_type u32, value
    tensor_count x  name string, n_dims u32, dims u64[n_dims] (innermost first),
                  ggml_type u32, offset u64 (relative to the data section)
    padding to `general.alignment` (a u32 KV, default 32)
    data section  each tensor at data_start + offset, offset a multiple of the alignment

    string = length u64 + that many UTF-8 bytes; array = item_type u32, count u64, items
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from .metadata import GGUFLoadError

VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
HEADER_BYTES = 24
# bytes of one scalar value
SCALAR_BYTES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}  # fmt: skip
# numpy dtype of one scalar value
SCALAR_DTYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}  # fmt: skip
# tensor types whose data is kept as numbers (the rest: raw bytes, uint8 [rows, row bytes])
NUMERIC_TENSOR_DTYPES = {
    GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64,
}  # fmt: skip
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a one-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset


def _unreadable(path: str, cause: str) -> GGUFLoadError:
    return GGUFLoadError(f"{path}: not a readable GGUF file: {cause}")


class _Cursor:
    """Little-endian reads from `buf` that never go past its end."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    def error(self, cause: str) -> GGUFLoadError:
        return _unreadable(self.path, cause)

    def left(self) -> int:
        return len(self.buf) - self.pos

    def skip(self, n: int, what: str) -> int:
        """Advance past `n` bytes; the offset they start at."""
        if n > self.left():
            raise self.error(f"{what} at byte {self.pos} needs {n} bytes, {self.left()} left (truncated or corrupt)")
        self.pos += n
        return self.pos - n

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.skip(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.skip(8, what))[0]

    def string(self, what: str, decode: bool = True) -> str:
        n = self.u64(f"length of {what}")
        start = self.skip(n, what)
        if not decode:
            return ""
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} at byte {start} is not UTF-8") from None

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """`n` items of at least `min_bytes` each must fit in the bytes left."""
        if n * min_bytes > self.left():
            raise self.error(f"{what} {n} at byte {self.pos} cannot fit in the {self.left()} bytes left")
        return n

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.error(f"unknown value type {raw} for {what}") from None


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: innermost (row) dim first
    data: np.ndarray  # memory-mapped (see the module docstring)


@dataclass(frozen=True)
class GGUFFile:
    path: str
    fields: dict[str, Any]  # key -> str / int / float / bool, or a list of them
    tensors: list[GGUFTensor]  # in file order


def read_gguf(path: str, populate: bool = False) -> GGUFFile:
    """The file's metadata and tensors; GGUFLoadError naming `path` and the cause unless it is
    structurally sound GGUF. populate: map the whole file in at once (Linux's MAP_POPULATE), for a
    caller that reads every tensor: one pass instead of a page fault per 4 KiB page (Gemma-3-270M:
    0.07 s instead of 0.3-0.7 s for its 253 MB, on a 2-core machine)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            if head[:4] != b"GGUF":
                raise _unreadable(path, f"bad magic {head[:4]!r} (expected b'GGUF')")
            if len(head) < HEADER_BYTES:
                raise _unreadable(path, f"{len(head)} bytes, shorter than the {HEADER_BYTES}-byte header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                fields, infos, data_start = _walk(_Cursor(buf, path))
        if not infos:
            data = np.zeros(0, np.uint8)
        elif populate and hasattr(mmap, "MAP_POPULATE"):
            with open(path, "rb") as f:
                flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
                data = np.frombuffer(mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ), dtype=np.uint8)
        else:
            data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise GGUFLoadError(f"{path}: cannot read: {e}") from e
    tensors = []
    for name, ggml_type, dims, offset, n_bytes in infos:
        raw = data[data_start + offset : data_start + offset + n_bytes]
        np_dims = tuple(reversed(dims)) or (1,)
        if ggml_type in NUMERIC_TENSOR_DTYPES:
            array = raw.view(NUMERIC_TENSOR_DTYPES[ggml_type]).reshape(np_dims)
        else:
            block, type_bytes = GGML_QUANT_SIZES[ggml_type]
            array = raw.reshape(*np_dims[:-1], np_dims[-1] // block * type_bytes)
        tensors.append(GGUFTensor(name, ggml_type, tuple(dims), array))
    return GGUFFile(path, fields, tensors)


def _walk(c: _Cursor) -> tuple[dict[str, Any], list[tuple], int]:
    """-> (metadata, tensor infos (name, type, dims, offset, n_bytes), start of the data section)"""
    c.skip(4, "magic")  # checked by the caller
    version = c.u32("version")
    if version not in VERSIONS:
        if version & 0xFFFF == 0:  # GGUFReader's test: a small version number written big-endian
            raise c.error("big-endian GGUF files are not supported")
        raise c.error(f"unsupported GGUF version {version} (supported: {VERSIONS})")
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("kv count")
    c.count(n_kv, MIN_KV_BYTES, "kv count")
    c.count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count")

    fields: dict[str, Any] = {}
    for i in range(n_kv):
        key = c.string(f"key of metadata entry {i}")
        if key in fields:
            raise c.error(f"duplicate metadata key {key!r}")
        vtype = c.value_type(repr(key))
        if key == "general.alignment" and vtype != GGUFValueType.UINT32:
            raise c.error(f"general.alignment has type {vtype.name}, expected UINT32")
        fields[key] = _value(c, vtype, repr(key))
    alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if alignment == 0 or alignment & (alignment - 1):
        raise c.error(f"general.alignment {alignment} is not a power of two")

    names = set()
    tensors = []  # (name, type, dims, offset, n_bytes)
    for i in range(n_tensors):
        name = c.string(f"name of tensor {i}")
        if name in names:
            raise c.error(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = c.u32(f"n_dims of {name!r}")
        if n_dims > MAX_DIMS:
            raise c.error(f"tensor {name!r} has {n_dims} dims (at most {MAX_DIMS})")
        dims = [c.u64(f"dims of {name!r}") for _ in range(n_dims)]
        raw = c.u32(f"type of {name!r}")
        try:
            ggml_type = GGMLQuantizationType(raw)
            block, type_bytes = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise c.error(f"tensor {name!r} has unknown ggml type {raw}") from None
        offset = c.u64(f"offset of {name!r}")
        n_elements = 1
        for d in dims:
            n_elements *= d  # a Python int: no uint64 wrap-around (numpy's product in GGUFReader wraps)
        if dims and dims[0] % block:
            raise c.error(f"tensor {name!r}: row of {dims[0]} elements is not a multiple of the block size {block}")
        if offset % alignment:
            raise c.error(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {alignment}")
        tensors.append((name, ggml_type, dims, offset, n_elements // block * type_bytes))

    data_start = -(-c.pos // alignment) * alignment  # the tensor infos padded to the alignment
    for name, _, _, offset, n_bytes in tensors:
        end = data_start + offset + n_bytes
        if end > len(c.buf):
            raise c.error(
                f"tensor {name!r} ({n_bytes} bytes at offset {offset}) ends at byte {end}, "
                f"past the end of the file ({len(c.buf)} bytes): truncated or corrupt"
            )
    # each tensor's data starts where the one before it ends, padded to the alignment (llama.cpp's
    # gguf.cpp refuses anything else): an offset that points into another tensor would load its bytes
    expected = 0
    for name, _, _, offset, n_bytes in tensors:
        if offset != expected:
            raise c.error(
                f"tensor {name!r} has data offset {offset}, expected {expected} (the end of the tensor "
                f"before it, padded to the alignment {alignment}): tensors overlap or leave a gap"
            )
        expected += -(-n_bytes // alignment) * alignment
    return fields, tensors, data_start


def _value(c: _Cursor, vtype: GGUFValueType, what: str) -> Any:
    """One metadata value of type `vtype` as Python (strings decoded, invalid UTF-8 replaced)."""
    if vtype in SCALAR_BYTES:
        start = c.skip(SCALAR_BYTES[vtype], what)
        value = np.frombuffer(c.buf, SCALAR_DTYPES[vtype], 1, start)[0].item()
        return bool(value) if vtype == GGUFValueType.BOOL else value
    if vtype == GGUFValueType.STRING:
        n = c.u64(f"length of {what}")
        start = c.skip(n, what)
        return c.buf[start : start + n].decode("utf-8", errors="replace")
    itype = c.value_type(f"items of {what}")  # ARRAY
    n = c.u64(f"length of {what}")
    if itype == GGUFValueType.ARRAY:  # no converter writes these; refusing them bounds the recursion
        raise c.error(f"{what} is an array of arrays (not supported)")
    if itype == GGUFValueType.STRING:
        c.count(n, 8, f"{what}: string count")
        return _strings(c, n, what)
    size = SCALAR_BYTES[itype]
    start = c.skip(c.count(n, size, f"{what}: item count") * size, what)
    values = np.frombuffer(c.buf, SCALAR_DTYPES[itype], n, start).tolist()
    return [bool(v) for v in values] if itype == GGUFValueType.BOOL else values


_U64 = struct.Struct("<Q")


def _strings(c: _Cursor, n: int, what: str) -> list[str]:
    """`n` GGUF strings (u64 length, UTF-8 bytes; invalid UTF-8 replaced), as `_value` reads one
    string, with the same bounds checks, in one loop: a vocabulary holds 100k-260k of them and the
    per-item calls (and their error-message strings) took most of a Gemma file's metadata walk."""
    buf, pos, size, unpack = c.buf, c.pos, len(c.buf), _U64.unpack_from
    out = [""] * n
    for i in range(n):
        if pos + 8 > size:
            c.pos = pos
            c.skip(8, f"length of {what}")  # raises, with the usual message
        (length,) = unpack(buf, pos)
        pos += 8
        if length > size - pos:
            c.pos = pos
            c.skip(length, what)  # raises
        out[i] = buf[pos : pos + length].decode("utf-8", errors="replace")
        pos += length
    c.pos = pos
    return out
