"""examples/decode.py as a user meets it: a bad --gguf path is one line on stderr, no traceback."""

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
