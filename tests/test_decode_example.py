"""examples/decode.py as a user meets it: a bad --gguf path is one line on stderr, no traceback."""

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys

import pytest

DECODE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "decode.py")


@pytest.mark.parametrize("bad", ["missing", "not_gguf", "directory"])
def test_bad_gguf_path_is_one_line_on_stderr(tmp_path, bad):
    path = tmp_path / f"{bad}.gguf"
    if bad == "not_gguf":
        path.write_text("hello, not a model\n")
    if bad == "directory":
        path.mkdir()
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--max-new-tokens", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], proc.stderr
    cause = {"missing": "no such file", "not_gguf": "bad magic", "directory": "not a regular file (a directory)"}[bad]
    assert cause in lines[0], lines[0]


def tiny_gguf(path, arch="llama", nan_tensor=None):
    """A tiny model file (tests/gguf/tiny_gguf.py); nan_tensor: a float32 tensor whose values are
    then overwritten with NaN in the file."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "gguf"))
    from gguf import GGUFReader
    from tiny_gguf import write_tiny_gguf

    write_tiny_gguf(path, arch)
    if nan_tensor is not None:
        (t,) = [t for t in GGUFReader(path).tensors if t.name == nan_tensor]
        with open(path, "r+b") as f:
            f.seek(t.data_offset)
            f.write(struct.pack("<f", math.nan) * int(t.n_elements))
    return path


@pytest.mark.parametrize("warmup, where", [("1", "in the warm-up's decode steps"), ("0", "at new token 0")])
def test_nan_weights_are_one_line_on_stderr(tmp_path, warmup, where):
    # NaN logits (here every output_norm weight NaN) stop generation: one line naming the file and
    # the cause, not a traceback, and in the warm-up no token that is not the model's
    path = tiny_gguf(tmp_path / "nan.gguf", nan_tensor="output_norm.weight")
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--backend", "eager"]
    cmd += ["--max-new-tokens", "2", "--warmup-tokens", warmup]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: the model's logits are NaN {where}: its weights"), proc.stderr


def test_more_positions_than_memory_is_one_line(tmp_path):
    # A KV cache of 10^7 positions (and its [S, S] masks) is refused before it is allocated, naming
    # the option, not the file
    path = tiny_gguf(tmp_path / "tiny.gguf")
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--max-new-tokens", "10000000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --max-new-tokens 10000000: setup_caches: 1 x 10000128 positions need"), last


def test_a_prompt_the_vocabulary_cannot_spell_is_one_line(tmp_path, monkeypatch):
    example = load_example()
    path = tiny_gguf(tmp_path / "tiny.gguf")
    real = example.load_gguf

    def load(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)

        def encode(text):
            raise ValueError("character 'x' has no piece")

        monkeypatch.setattr(tokenizer, "encode", encode)
        return model, tokenizer

    monkeypatch.setattr(example, "load_gguf", load)
    with pytest.raises(SystemExit, match=f"error: {path}: the prompt cannot be encoded: character 'x' has no piece"):
        example.main(["--gguf", str(path), "--device", "cpu", "--backend", "eager", "--max-new-tokens", "1"])


def test_the_timed_run_reuses_the_step_the_warm_up_compiled(tmp_path):
    # The warm-up compiles the decode step from a token without prefilling the prompt; the timed
    # generation must hit that compiled code (a recompile would be timed as the first token).
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "gguf"))
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "tiny-gemma3.gguf"
    write_tiny_gguf(path, "gemma3")
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--max-new-tokens", "4", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fusion report (1 graph(s) compiled)" in proc.stderr, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["tokens"]) == 4
    steps = result["decode_step_ms"]  # three gaps between four tokens
    assert 0 < steps["median"] <= steps["p90"] <= steps["max"], steps
    assert result["gc_freeze"] is True and "decode steps: median" in proc.stderr
    assert result["device_step_ms"] is None and "device steps" not in proc.stderr  # --device-timing: CUDA only
    assert result["host_wait_ms"] is None and "host waits" not in proc.stderr


def load_example():
    spec = importlib.util.spec_from_file_location("decode_example", DECODE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_step_times_are_the_gaps_between_tokens():
    example = load_example()
    gaps = [1.0, 3.0, 2.0, 50.0, 1.0, 2.0, 2.0, 1.0, 3.0, 2.0]  # ms; one pause of 50 ms
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g / 1e3)
    steps = example.step_times_ms(times)
    ordered = sorted(gaps)
    assert steps["median"] == pytest.approx(2.0)
    assert steps["p90"] == pytest.approx(ordered[8])  # nearest rank: the 9th of 10
    assert steps["max"] == pytest.approx(50.0)
    assert example.step_times_ms([0.5]) is None and example.step_times_ms([]) is None
    assert example.parse_args(["--device", "cpu"]).no_gc_freeze is False
    assert example.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "p90": 3.0, "max": 3.0} and example.spread([]) is None


def test_device_timing_needs_cuda(capsys):
    example = load_example()
    with pytest.raises(SystemExit):
        example.parse_args(["--device", "cpu", "--device-timing"])
    assert "--device-timing times CUDA events: it needs --device cuda" in capsys.readouterr().err


def test_cuda_graphs_choice():
    """--cuda-graphs: trees by default; plain wraps the step in GraphedStep on cuda only (on cpu the
    step is the same as without it)."""
    example = load_example()
    from inductor_fuse.models.generate import GraphedStep, decode_one_token

    assert example.parse_args(["--device", "cpu"]).cuda_graphs == "trees"
    assert example.parse_args(["--cuda-graphs", "plain"]).cuda_graphs == "plain"
    assert example.compile_step("eager", "cpu", "plain") is decode_one_token
    assert isinstance(example.compile_step("eager", "cuda", "plain"), GraphedStep)
    assert example.compile_step("eager", "cuda", "trees") is decode_one_token
    assert not isinstance(example.compile_step("inductor_fuse", "cpu", "plain"), GraphedStep)
    assert isinstance(example.compile_step("inductor_fuse", "cuda", "plain"), GraphedStep)  # (compiles lazily)


SETTLE_SCRIPT = """
import gc, json
from inductor_fuse.models.generate import settled_gc

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a

kept = [{"i": i} for i in range(5000)]  # alive on entry: frozen within
before = gc.get_freeze_count()
with settled_gc():
    frozen = gc.get_freeze_count()
    cycle()  # garbage made within: still collected
    collected = gc.collect()
print(json.dumps({"before": before, "frozen": frozen, "collected": collected, "after": gc.get_freeze_count()}))
"""


def test_settled_gc_freezes_what_lives_and_still_collects_what_comes_after():
    # In a subprocess: gc.freeze is process-wide and would keep this test process's garbage cycles.
    proc = subprocess.run(
        [sys.executable, "-c", SETTLE_SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == 0 and out["frozen"] >= 5000, out
    assert out["collected"] >= 2, out  # the two Nodes of the cycle (and their __dict__s)
    assert out["after"] == 0, out  # unfrozen on exit: shutdown's collection reaches them again


def test_compiled_and_stepped_prefills_give_the_eager_prefills_tokens(tmp_path):
    # --prefill compiled on the CPU: the prompt's graph and the decode step's, both compiled in the
    # warm-up (2 graphs, none in the timed run), and the tokens of the eager prefill; --prefill
    # steps (the default on cuda for short prompts): the decode step's graph only, the same tokens.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "gguf"))
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(path, "llama")
    base = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--max-new-tokens", "4", "--json"]
    out = {}
    for how in ("compiled", "steps", "eager"):
        proc = subprocess.run([*base, "--prefill", how], capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[how] = json.loads(proc.stdout.strip().splitlines()[-1])
        graphs = 2 if how == "compiled" else 1
        assert f"fusion report ({graphs} graph(s) compiled)" in proc.stderr, proc.stderr[-4000:]
        assert out[how]["prefill"] == how
    assert out["compiled"]["tokens"] == out["eager"]["tokens"] == out["steps"]["tokens"]


def test_auto_prefill_steps_short_prompts_on_cuda_only():
    example = load_example()
    top = example.STEPS_MAX_PROMPT
    assert example.resolve_prefill("auto", "cuda", 6) == "steps"
    assert example.resolve_prefill("auto", "cuda", top) == "steps"
    assert example.resolve_prefill("auto", "cuda", top + 1) == "graphs"
    assert example.resolve_prefill("auto", "cpu", 6) == "eager"
    assert example.resolve_prefill("compiled", "cuda", 6) == "compiled"
    assert example.parse_args(["--device", "cpu"]).prefill == "auto"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temperature", "nan"], "--temperature must be finite and >= 0"),
        (["--temperature", "inf"], "--temperature must be finite and >= 0"),
        (["--temperature", "-1"], "--temperature must be finite and >= 0"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--max-seq-len", "0"], "--max-seq-len must be at least 1"),
        (["--warmup-tokens", "-5"], "--warmup-tokens must be at least 0"),
    ],
)
def test_meaningless_options_are_refused_before_anything_loads(argv, message, capsys):
    example = load_example()
    with pytest.raises(SystemExit):
        example.parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "arch, argv, message",
    [
        ("llama", ["--max-seq-len", "4", "--max-new-tokens", "8"], "--max-seq-len 4 cannot hold the prompt"),
        ("qwen2", ["--prompt", ""], "the prompt is empty"),  # (a vocabulary that adds no BOS: no token at all)
    ],
)
def test_a_prompt_that_cannot_run_is_one_line_on_stderr(tmp_path, arch, argv, message):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "gguf"))
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / f"tiny-{arch}.gguf"
    write_tiny_gguf(path, arch)
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
