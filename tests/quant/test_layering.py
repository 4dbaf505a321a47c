"""The import layering: quant/ never imports kernels/, imports sit at module top, no cycles.

`import inductor_fuse.quant` runs inductor_fuse/__init__.py first, which imports kernels on
purpose. So the runtime checks load modules in a fresh interpreter whose `inductor_fuse` is a bare
namespace (its __init__ not run): each module then imports exactly what it asks for, and a module
that is the first one imported meets any cycle through it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inductor_fuse

PACKAGE = Path(inductor_fuse.__file__).parent
QUANT = PACKAGE / "quant"

# Run as the first import of a fresh interpreter, with inductor_fuse/__init__.py not run.
_BARE = f"""
import os, sys, types
pkg = types.ModuleType("inductor_fuse")
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["inductor_fuse"] = pkg
"""


def _run(code: str) -> None:
    r = subprocess.run([sys.executable, "-c", _BARE + code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(node, imported module as written, at module top?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is None:  # from . import x
            out += [(node, "." * node.level + a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node, "." * node.level + node.module, id(node) in top))
    return out


@pytest.mark.parametrize("path", sorted(QUANT.glob("*.py")), ids=lambda p: p.name)
def test_quant_sources_do_not_import_kernels_and_import_at_top(path):
    for node, module, at_top in _imports(path):
        where = f"{path.name}:{node.lineno}"
        assert "kernels" not in module.split("."), f"{where}: quant/ must not import kernels ({module})"
        assert at_top, f"{where}: import of {module} inside a function or block"


def test_format_files_import_the_base_not_the_registry():
    for path in sorted(QUANT.glob("*.py")):
        if path.name in ("__init__.py", "formats.py", "weight.py", "linear.py", "op.py"):
            continue  # the registry and what builds on it
        for node, module, _ in _imports(path):
            assert module.lstrip(".") != "formats", f"{path.name}:{node.lineno}: a format file imports the registry"


def test_quant_alone_defines_the_op_and_imports_no_kernels():
    _run("""
import torch
import inductor_fuse.quant
loaded = sorted(m for m in sys.modules if m.startswith("inductor_fuse.kernels") or m == "triton")
assert not loaded, loaded
assert not torch._C._dispatch_has_kernel_for_dispatch_key("inductor_fuse::qlinear", "CUDA")
planes = inductor_fuse.quant.FORMATS["q8_0"].quantize(torch.randn(8, 64))
assert torch.ops.inductor_fuse.qlinear(torch.randn(2, 64), list(planes), None, "q8_0").shape == (2, 8)
import inductor_fuse.kernels.ops
assert torch._C._dispatch_has_kernel_for_dispatch_key("inductor_fuse::qlinear", "CUDA")
""")


@pytest.mark.parametrize(
    "module",
    [
        "inductor_fuse.quant.q4_k",
        "inductor_fuse.quant.formats",
        "inductor_fuse.quant.op",
        "inductor_fuse.kernels.ops",
        "inductor_fuse.gguf.loader",
        "inductor_fuse.patterns.siblings",
        "inductor_fuse.patterns.act_quant",
        "inductor_fuse.kernels.norm_quant",
        "inductor_fuse.attention",
        "inductor_fuse.kernels.decode_attention",
        "inductor_fuse.patterns.decode_attention",
    ],
)
def test_no_import_cycle(module):
    _run(f"import {module}")


def test_package_import_registers_the_cuda_kernels():
    ops = ("qlinear", "glu_qlinear", "qlinear_q8", "glu_qlinear_q8", "quantize_act", "rmsnorm_quantize_act")
    ops = (*ops, "decode_attention")
    for op in (f"inductor_fuse::{name}" for name in ops):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def test_the_attention_op_imports_no_kernels():
    _run("""
import inductor_fuse.attention
loaded = sorted(m for m in sys.modules if m.startswith("inductor_fuse.kernels") or m == "triton")
assert not loaded, loaded
""")
