"""Corrupt GGUF files: every corruption class fails with one GGUFLoadError naming the file and the
cause, within a time and memory budget; a bounded fuzz of a tiny valid file gets nothing else.

Each load runs in a worker process (started once, restarted if it dies) that imports the loader
first, then for each file caps its address space at (current size + 1 GiB) with RLIMIT_AS and
arms a 10 s SIGALRM. A loader that believes a lying header fails the budget: the allocation
raises MemoryError, or the alarm kills the worker.

Larger fuzz run (the seed varies the mutations):
    GGUF_FUZZ_EXAMPLES=5000 GGUF_FUZZ_SEED=1 python -m pytest -q tests/gguf/test_gguf_corrupt.py -k fuzz
"""

import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import time

import pytest
from gguf import GGUFReader

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the budget uses RLIMIT_AS and /proc")

BUDGET_S = 10
BUDGET_BYTES = 1 << 30
FUZZ_EXAMPLES = int(os.environ.get("GGUF_FUZZ_EXAMPLES", "200"))
FUZZ_SEED = int(os.environ.get("GGUF_FUZZ_SEED", "0"))

# Request: {"path", "seconds": time budget, "alloc": bytes to allocate first, "sleep": seconds to sleep first}.
# Reply: [outcome ("ok", an exception type name), message, seconds].
WORKER = f"""
import json, resource, signal, sys, time
from inductor_fuse.gguf import GGUFLoadError, load_gguf

def address_space():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()

for line in sys.stdin:
    request = json.loads(line)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + {BUDGET_BYTES}, resource.RLIM_INFINITY))
    signal.alarm(request.get("seconds", {BUDGET_S}))  # default action: the worker dies
    t0 = time.perf_counter()
    try:
        bytearray(request.get("alloc", 0))
        time.sleep(request.get("sleep", 0))
        load_gguf(request["path"], max_seq_len=16, progress=False)
        reply = ["ok", ""]
    except BaseException as e:  # MemoryError when over the budget
        reply = [type(e).__name__, str(e)]
    seconds = time.perf_counter() - t0
    signal.alarm(0)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps([*reply, seconds]), flush=True)
"""


class Worker:
    def __init__(self):
        self.proc = None

    def load(self, path, **waste) -> tuple[str, str, float]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        self.proc.stdin.write(json.dumps(dict(path=str(path), **waste)) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            return "died", f"worker exited with {self.proc.wait()} (-14: SIGALRM, over the time budget)", BUDGET_S
        return tuple(json.loads(reply))

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def valid(tiny_gguf):
    """(bytes of a valid tiny llama GGUF, its GGUFReader) -- the reader locates fields to corrupt."""
    path = tiny_gguf("llama")[0]
    return open(path, "rb").read(), GGUFReader(path)


def test_budget_catches_a_big_allocation(worker, tiny_gguf):
    outcome, message, _ = worker.load(tiny_gguf("llama")[0], alloc=2 * BUDGET_BYTES)
    assert outcome == "MemoryError", (outcome, message)


def test_budget_catches_a_hang(worker, tiny_gguf):
    outcome, message, _ = worker.load(tiny_gguf("llama")[0], seconds=1, sleep=5)
    assert outcome == "died" and "-14" in message, (outcome, message)


def test_valid_file_loads_within_budget(worker, tiny_gguf):
    outcome, message, seconds = worker.load(tiny_gguf("llama")[0])
    assert outcome == "ok", message
    assert seconds < BUDGET_S


# --- corruption classes -----------------------------------------------------------------------
# A mutation gets (bytearray of the valid file, its GGUFReader) and returns the corrupt bytes. It
# checks it hits what it means to: a cut lies in the intended section, an overwritten field holds
# its expected old value.


def at(field, part: int, index: int = 0) -> int:
    """Byte offset of `field.parts[part]` (element `index`) in the file. KV parts: key_len, key,
    value_type, value... (arrays: item_type, count, items); tensor-info parts: name_len, name,
    n_dims, dims, ggml_type, offset."""
    return field.offset + sum(int(p.nbytes) for p in field.parts[:part]) + index * field.parts[part].itemsize


def put(data: bytearray, offset: int, fmt: str, old, new) -> bytearray:
    assert struct.unpack_from(fmt, data, offset)[0] == old, "the mutation missed its field"
    struct.pack_into(fmt, data, offset, new)
    return data


def rewrite_value(data: bytearray, r, key: str, fmt: str, new) -> bytearray:
    """A scalar metadata value rewritten in place, whatever it was."""
    offset = at(kv(r, key), 3)
    return put(data, offset, fmt, struct.unpack_from(fmt, data, offset)[0], new)


def cut(data: bytearray, offset: int, section: tuple[int, int]) -> bytearray:
    assert section[0] <= offset < section[1], "the cut missed its section"
    return data[:offset]


def sections(r: GGUFReader) -> dict[str, tuple[int, int]]:
    info = r.tensors[0].field.offset
    return {
        "header": (0, 24),
        "kv": (24, info),
        "tensor_info": (info, r.data_offset),
        "data": (r.data_offset, len(r.data)),
    }


def kv(r, key):
    return r.fields[key]


def tensor(r, name):
    return next(t.field for t in r.tensors if t.name == name)


Q = "blk.0.attn_q.weight"
CASES = {
    # truncated anywhere
    "truncated_in_header": (lambda d, r: cut(d, 12, sections(r)["header"]), r"shorter than the 24-byte header"),
    "truncated_in_kv_value": (
        lambda d, r: cut(d, at(kv(r, "tokenizer.ggml.add_bos_token"), 3), sections(r)["kv"]),
        r"'tokenizer.ggml.add_bos_token' at byte \d+ needs 1 bytes, 0 left",
    ),
    "truncated_in_kv_array": (
        lambda d, r: cut(d, at(kv(r, "tokenizer.ggml.tokens"), 5) + 100, sections(r)["kv"]),
        r"string count 400 .* cannot fit in the 100 bytes left",
    ),
    "truncated_in_tensor_info": (
        lambda d, r: cut(d, at(tensor(r, Q), 3), sections(r)["tensor_info"]),
        r"dims of .* needs 8 bytes, 0 left",
    ),
    "truncated_in_data": (
        lambda d, r: cut(d, (r.data_offset + len(d)) // 2, sections(r)["data"]),
        r"past the end of the file",
    ),
    "truncated_last_byte": (lambda d, r: cut(d, len(d) - 1, sections(r)["data"]), r"past the end of the file"),
    # not GGUF / unsupported header
    "wrong_magic": (lambda d, r: put(d, 0, "4s", b"GGUF", b"GGML"), r"bad magic b'GGML'"),
    "big_endian": (lambda d, r: put(d, 4, "<I", 3, 3 << 24), r"big-endian"),
    "unsupported_version": (lambda d, r: put(d, 4, "<I", 3, 1), r"unsupported GGUF version 1"),
    # flipped bytes in the metadata
    "key_not_utf8": (
        lambda d, r: put(d, at(kv(r, "general.architecture"), 1), "B", ord("g"), ord("g") ^ 0x80),
        r"key of metadata entry 0 .* not UTF-8",
    ),
    "unknown_value_type": (
        lambda d, r: put(d, at(kv(r, "llama.block_count"), 2), "<I", 4, 4 ^ 0x10),
        r"unknown value type 20 for 'llama.block_count'",
    ),
    "unknown_array_item_type": (
        lambda d, r: put(d, at(kv(r, "tokenizer.ggml.tokens"), 3), "<I", 8, 99),
        r"unknown value type 99 for items of 'tokenizer.ggml.tokens'",
    ),
    "array_of_arrays": (lambda d, r: put(d, at(kv(r, "tokenizer.ggml.tokens"), 3), "<I", 8, 9), r"array of arrays"),
    "duplicate_key": (
        lambda d, r: put(
            d, at(kv(r, "llama.rope.freq_base"), 1), "20s", b"llama.rope.freq_base", b"llama.context_length"
        ),
        r"duplicate metadata key 'llama.context_length'",
    ),
    "block_count_2^24": (
        lambda d, r: put(d, at(kv(r, "llama.block_count"), 3), "<I", 2, (1 << 24) + 2),
        r"block_count",
    ),  # a 16M-layer model
    "head_count_0": (lambda d, r: put(d, at(kv(r, "llama.attention.head_count"), 3), "<I", 4, 0), r"head_count"),
    # values that load into a model of NaN logits, or a smaller model than the file holds
    "rope_base_0": (
        lambda d, r: rewrite_value(d, r, "llama.rope.freq_base", "<f", 0.0),
        r"freq_base is 0.0, not a finite number > 0",
    ),
    "rope_base_inf": (
        lambda d, r: rewrite_value(d, r, "llama.rope.freq_base", "<f", math.inf),
        r"freq_base is inf, not a finite number > 0",
    ),
    # a count stored as a float32 that is no whole number (4 bytes either way: type 4 -> 6)
    "block_count_not_whole": (
        lambda d, r: rewrite_value(
            put(d, at(kv(r, "llama.block_count"), 2), "<I", 4, 6), r, "llama.block_count", "<f", 2.5
        ),
        r"llama.block_count is 2.5, not an integer",
    ),
    "rope_base_negative": (lambda d, r: rewrite_value(d, r, "llama.rope.freq_base", "<f", -1e4), r"freq_base"),
    "rope_base_nan": (lambda d, r: rewrite_value(d, r, "llama.rope.freq_base", "<f", math.nan), r"freq_base is nan"),
    "norm_eps_negative": (
        lambda d, r: rewrite_value(d, r, "llama.attention.layer_norm_rms_epsilon", "<f", -1.0),
        r"layer_norm_rms_epsilon is -1.0, not in \[0, 1\)",
    ),
    "block_count_below_the_files_layers": (
        lambda d, r: put(d, at(kv(r, "llama.block_count"), 3), "<I", 2, 1),
        r"block_count is 1, but the file has tensors of layer\(s\) \[1\]",
    ),
    "bos_id_outside_the_vocabulary": (
        lambda d, r: rewrite_value(d, r, "tokenizer.ggml.bos_token_id", "<I", 99999),
        r"bos_token_id 99999 is outside the vocabulary of \d+ tokens",
    ),
    # absurd declared lengths
    "string_length_2^62": (
        lambda d, r: put(d, at(kv(r, "general.architecture"), 3), "<Q", 5, 1 << 62),
        r"needs 4611686018427387904 bytes",
    ),
    "key_length_2^62": (
        lambda d, r: put(d, at(kv(r, "llama.block_count"), 0), "<Q", 17, 1 << 62),
        r"key of metadata entry 3 at byte \d+ needs 4611686018427387904 bytes",
    ),
    "string_array_count_2^40": (
        lambda d, r: put(
            d, at(kv(r, "tokenizer.ggml.tokens"), 4), "<Q", len(kv(r, "tokenizer.ggml.tokens").data), 1 << 40
        ),
        r"string count 1099511627776 .* cannot fit",
    ),
    "int_array_count_2^40": (
        lambda d, r: put(
            d, at(kv(r, "tokenizer.ggml.token_type"), 4), "<Q", len(kv(r, "tokenizer.ggml.token_type").data), 1 << 40
        ),
        r"item count 1099511627776 .* cannot fit",
    ),
    "tensor_count_2^62": (
        lambda d, r: put(d, 8, "<Q", len(r.tensors), 1 << 62),
        r"tensor count 4611686018427387904 .* cannot fit",
    ),
    "kv_count_2^62": (
        lambda d, r: put(d, 16, "<Q", len(r.fields) - 3, 1 << 62),
        r"kv count 4611686018427387904 .* cannot fit",
    ),
    "n_dims_2^31": (lambda d, r: put(d, at(tensor(r, Q), 2), "<I", 2, 1 << 31), r"has 2147483648 dims"),
    "dim_2^40": (
        lambda d, r: put(d, at(tensor(r, Q), 3, 1), "<Q", 256, 1 << 40),
        rf"'{Q}' \(\d+ bytes .* past the end of the file",
    ),
    # 2^32 x 2^32 elements: numpy's uint64 product wraps to 0 bytes
    "dims_overflow_64_bits": (
        lambda d, r: put(
            put(d, at(tensor(r, Q), 3, 0), "<Q", 256, 1 << 32), at(tensor(r, Q), 3, 1), "<Q", 256, 1 << 32
        ),
        r"past the end of the file",
    ),
    "row_not_whole_blocks": (
        lambda d, r: put(d, at(tensor(r, Q), 3, 0), "<Q", 256, 255),
        r"row of 255 elements is not a multiple of the block size 256",
    ),
    # tensor data ranges
    "offset_past_end": (
        lambda d, r: put(d, at(r.tensors[-1].field, 5), "<Q", int(r.tensors[-1].field.parts[5][0]), 1 << 40),
        r"past the end of the file",
    ),
    "offset_misaligned": (
        lambda d, r: put(
            d, at(tensor(r, Q), 5), "<Q", int(tensor(r, Q).parts[5][0]), int(tensor(r, Q).parts[5][0]) + 1
        ),
        r"not a multiple of the alignment 32",
    ),
    # one tensor's data offset pointing at another's bytes (llama.cpp refuses it too)
    "offset_into_another_tensor": (
        lambda d, r: put(d, at(r.tensors[-1].field, 5), "<Q", int(r.tensors[-1].field.parts[5][0]), 0),
        r"has data offset 0, expected \d+ .*: tensors overlap or leave a gap",
    ),
    # a type whose blocks are larger: the tensor would read into the next one's bytes
    "type_reads_into_the_next_tensor": (
        lambda d, r: put(d, at(tensor(r, Q), 4), "<I", 12, 8),
        r"has data offset \d+, expected \d+ .*: tensors overlap or leave a gap",
    ),
    "duplicate_tensor_name": (
        lambda d, r: put(d, at(tensor(r, Q), 1), f"{len(Q)}s", Q.encode(), Q.replace("_q", "_k").encode()),
        r"duplicate tensor name 'blk.0.attn_k.weight'",
    ),
    # unknown tensor types
    "unknown_tensor_type": (lambda d, r: put(d, at(tensor(r, Q), 4), "<I", 12, 99), rf"'{Q}' has unknown ggml type 99"),
    "removed_tensor_type": (
        lambda d, r: put(d, at(tensor(r, Q), 4), "<I", 12, 4),
        rf"'{Q}' has unknown ggml type 4",
    ),  # Q4_2, removed from ggml
}


@pytest.mark.parametrize("case", CASES)
def test_corrupt_file_raises_one_clear_error(worker, valid, tmp_path, case):
    mutate, cause = CASES[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(bytes(mutate(bytearray(valid[0]), valid[1])))
    outcome, message, seconds = worker.load(path)
    assert outcome == "GGUFLoadError", (outcome, message)
    assert message.startswith(f"{path}: ")
    assert re.search(cause, message), message
    assert seconds < BUDGET_S


# --- fuzz -------------------------------------------------------------------------------------


def mutate_randomly(data: bytes, structure_end: int, rng: random.Random) -> tuple[bytes, str]:
    """One random corruption of `data`, and how to redo it. Most land in the header, metadata and
    tensor infos (the first `structure_end` bytes), where the structure is."""
    d = bytearray(data)
    end = structure_end if rng.random() < 0.8 else len(d)
    kind = rng.choice(("flip", "flip", "truncate", "splice"))
    if kind == "flip":
        spots = [(rng.randrange(end), rng.randrange(1, 256)) for _ in range(rng.randint(1, 4))]
        for i, x in spots:
            d[i] ^= x
        return bytes(d), f"xor {spots}"
    if kind == "truncate":
        n = rng.randrange(end)
        return bytes(d[:n]), f"truncate to {n}"
    src, dst, n = rng.randrange(end), rng.randrange(end), rng.randint(1, 64)
    chunk = d[src : src + n]
    if rng.random() < 0.5:  # overwrite in place
        d[dst : dst + len(chunk)] = chunk
        return bytes(d), f"copy {n} bytes from {src} over {dst}"
    return bytes(d[:dst] + chunk + d[dst:]), f"insert {n} bytes from {src} at {dst}"


def test_fuzz_outcome_is_load_or_gguf_load_error(worker, valid, tmp_path):
    data, reader = valid
    rng = random.Random(FUZZ_SEED)
    path = tmp_path / "fuzz.gguf"
    failures, outcomes = [], {}
    t0 = time.perf_counter()
    for i in range(FUZZ_EXAMPLES):
        corrupt, how = mutate_randomly(data, reader.data_offset, rng)
        path.write_bytes(corrupt)
        outcome, message, seconds = worker.load(path)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if (
            outcome not in ("ok", "GGUFLoadError")
            or seconds >= BUDGET_S
            or (outcome != "ok" and str(path) not in message)
        ):
            failures.append(f"#{i} {how}: {outcome} after {seconds:.1f} s: {message[:300]}")
    print(f"{FUZZ_EXAMPLES} mutations in {time.perf_counter() - t0:.1f} s: {outcomes}")
    assert outcomes.get("GGUFLoadError", 0) > FUZZ_EXAMPLES // 4  # the mutations do corrupt
    assert not failures, f"seed {FUZZ_SEED}:\n" + "\n".join(failures)
