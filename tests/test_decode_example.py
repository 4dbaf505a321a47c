"""examples/decode.py as a user meets it: a bad --gguf path is one line on stderr, no traceback."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

DECODE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "decode.py")


@pytest.mark.parametrize("bad", ["missing", "not_gguf"])
def test_bad_gguf_path_is_one_line_on_stderr(tmp_path, bad):
    path = tmp_path / f"{bad}.gguf"
    if bad == "not_gguf":
        path.write_text("hello, not a model\n")
    cmd = [sys.executable, DECODE, "--gguf", str(path), "--device", "cpu", "--max-new-tokens", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], proc.stderr
    cause = "no such file" if bad == "missing" else "bad magic"
    assert cause in lines[0], lines[0]


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
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])["tokens"]) == 4


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
    spec = importlib.util.spec_from_file_location("decode_example", DECODE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
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
        (["--temperature", "nan"], "--temperature must be >= 0"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--max-seq-len", "0"], "--max-seq-len must be at least 1"),
    ],
)
def test_meaningless_options_are_refused_before_anything_loads(argv, message, capsys):
    spec = importlib.util.spec_from_file_location("decode_example", DECODE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
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
