"""The backend as a user meets it: entry point, options, modes, the report, cache correctness."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn as nn
from numerics import rel_err
from toy_models import TinyLlama

import inductor_fuse
from inductor_fuse.backend import entry_point_installed

TESTS_DIR = os.path.dirname(__file__)


def run_script(code: str, env_extra: dict | None = None, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is a JSON object."""
    env = {**os.environ, "PYTHONPATH": TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fresh_process_without_import(device):
    # The entry point registers the backend: no `import inductor_fuse` before compiling.
    if not entry_point_installed():
        pytest.skip("inductor_fuse is not pip-installed here (a source tree on PYTHONPATH): no entry point to test")
    out = run_script(
        """
        import json, sys, torch
        from numerics import rel_err
        from toy_models import TinyLlama
        torch.manual_seed(0)
        model = TinyLlama(n_layers=2).eval().to("DEVICE")
        x = torch.randn(2, 6, 64, device="DEVICE")
        with torch.no_grad():
            imported_before = "inductor_fuse" in sys.modules
            got = torch.compile(model, backend="inductor_fuse")(x)
            err = rel_err(got, model(x))
        import inductor_fuse
        print(json.dumps({"imported_before": imported_before, "err": err,
                          "counts": inductor_fuse.last_report().counts,
                          "summary": inductor_fuse.last_report().summary(),
                          "torch": torch.__version__}))
        """.replace("DEVICE", device)
    )
    print(device, out)
    assert not out["imported_before"]
    assert out["err"] < 1e-4
    assert out["counts"]["siblings"] == 2 and out["counts"]["glu"] == 2, out["summary"]  # q|k|v, gate|up


def test_the_name_works_without_the_entry_point():
    """A source tree on PYTHONPATH, not pip-installed (no entry point): `import inductor_fuse` gives
    Dynamo the name; installed, the import registers nothing (the entry point does)."""
    out = run_script(
        """
        import importlib.metadata as metadata, json, torch
        real = metadata.entry_points

        def entry_points(**kw):  # as where the package is not installed
            eps = real(**kw)
            if kw.get("group") != "torch_dynamo_backends":
                return eps
            return metadata.EntryPoints(e for e in eps if e.name != "inductor_fuse")

        metadata.entry_points = entry_points
        from torch._dynamo.exc import InvalidBackend
        f = lambda x: torch.nn.functional.silu(x) * 2.0
        try:
            torch.compile(f, backend="inductor_fuse")(torch.randn(4))
            before = "compiled"
        except InvalidBackend:
            before = "invalid"
        import inductor_fuse
        from inductor_fuse.backend import register_without_entry_point
        x = torch.randn(8)
        got = torch.compile(f, backend="inductor_fuse")(x)
        print(json.dumps({"before": before, "equal": bool(torch.allclose(got, f(x))),
                          "report": inductor_fuse.last_report() is not None,
                          "again": register_without_entry_point()}))
        """
    )
    assert out == {"before": "invalid", "equal": True, "report": True, "again": False}, out
    from inductor_fuse.backend import register_without_entry_point

    assert register_without_entry_point() is False  # installed: the entry point names it


CACHE_SCRIPT = """
    import json, torch
    from torch._dynamo.utils import counters
    from numerics import rel_err
    from toy_models import TinyLlama
    import inductor_fuse
    x = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(9))
    errs, counts = {}, {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = TinyLlama(n_layers=2).eval()
        # each model recompiles (the identity guards on its weights), re-traces and meets the cache
        with torch.no_grad():
            got = torch.compile(model, backend="inductor_fuse")(x)
            errs[seed] = rel_err(got, model(x))
        counts[seed] = [inductor_fuse.last_report().counts[f] for f in ("siblings", "glu")]
    print(json.dumps({"errs": errs, "counts": counts, "hits": counters["inductor"]["fxgraph_cache_hit"],
                      "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def test_cache_serves_each_model_its_own_weights(tmp_path):
    # Same structure, different weights, warm FX graph cache: each model gets its own result.
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
    cold = run_script(CACHE_SCRIPT.replace("SEEDS", "[0, 1]"), env)
    warm = run_script(CACHE_SCRIPT.replace("SEEDS", "[1, 0, 2]"), env)
    for out in (cold, warm):
        assert all(e < 1e-4 for e in out["errs"].values()), out
        assert all(c == [2, 2] for c in out["counts"].values()), out  # q|k|v, gate|up in 2 layers
    assert cold["misses"] >= 1
    assert warm["hits"] >= 3 and warm["misses"] == 0, warm  # the warm run really hit the cache


def test_reduce_overhead_mode_and_make_backend():
    torch.manual_seed(5)
    model = TinyLlama(n_layers=1).eval()
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        got = torch.compile(model, backend="inductor_fuse", mode="reduce-overhead")(x)
        assert rel_err(got, model(x)) < 1e-4
        got = torch.compile(model, backend=inductor_fuse.make_backend(mode="reduce-overhead", siblings=True))(x)
        assert rel_err(got, model(x)) < 1e-4
    assert inductor_fuse.last_report().counts["siblings"] == 1 and inductor_fuse.last_report().counts["glu"] == 1


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"unknown inductor_fuse option\(s\) \['sibling'\]; valid options are"):
        inductor_fuse.make_backend(sibling=False)
    with pytest.raises(TypeError, match="must be a bool"):
        inductor_fuse.FuseOptions.from_dict({"siblings": "no"})
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        inductor_fuse.make_backend(mode="fast")
    model = nn.Linear(8, 8).eval()
    with pytest.raises(Exception, match="unknown inductor_fuse option"):
        with torch.no_grad():
            torch.compile(model, backend="inductor_fuse", options={"bogus": True})(torch.randn(2, 8))


def test_report_history_and_totals():
    inductor_fuse.clear_reports()
    assert inductor_fuse.last_report() is None
    with torch.no_grad():  # two models: the second one recompiles (the identity guards on its weights)
        for _ in range(2):
            torch.compile(TinyLlama(n_layers=1).eval(), backend="inductor_fuse")(torch.randn(1, 2, 64))
    assert len(inductor_fuse.all_reports()) == 2
    assert inductor_fuse.total_counts()["siblings"] == 2 and inductor_fuse.total_counts()["glu"] == 2
    text = str(inductor_fuse.last_report())
    assert "rewrite siblings (q_proj,k_proj,v_proj)" in text and "skipped siblings" in text


def test_report_times_each_family_and_the_compile(monkeypatch):
    # a family that takes a known time shows it; a family switched off is not timed
    import dataclasses
    import time

    from inductor_fuse.patterns import registry

    siblings = registry._REGISTRY["siblings"]

    def slow_siblings(graph):
        time.sleep(0.3)
        return siblings.run(graph)

    monkeypatch.setitem(registry._REGISTRY, "siblings", dataclasses.replace(siblings, run=slow_siblings))
    model = TinyLlama(n_layers=1).eval()
    with torch.no_grad():
        torch.compile(model, backend="inductor_fuse", options={"conv1d": False})(torch.randn(1, 3, 64))
    rep = inductor_fuse.last_report()
    want = {f"rules/{f}" for f in registry.family_names() if f != "conv1d"} | {"rules/graph copy", "compile"}
    # the frozen-graph cache's save, where this graph (static, or symbolic when Dynamo's automatic
    # dynamic has seen TinyLlama's forward at other shapes earlier in the process) got an entry
    assert rep.frozen_cache in ("saved", ""), rep.notes  # a cold compile: the rules ran
    want |= {"frozen_cache/save"} if rep.frozen_cache == "saved" else set()
    assert set(rep.seconds) == want, rep.seconds
    assert 0.3 <= rep.seconds["rules/siblings"] < 0.3 + 5
    rules = sum(v for k, v in rep.seconds.items() if k.startswith("rules/"))
    assert rules < rep.seconds["compile"]
    assert rep.counts["siblings"] == 1  # the wrapped rule still ran
    assert f"time: rules {rules:.2f} s (" in str(rep) and "siblings 0.3" in str(rep)


def test_a_cpu_graph_prepares_the_cpp_toolchain_on_a_thread(monkeypatch):
    # Inductor's check of the C++ compiler's SIMD ISAs (dry compiles, ~5 s cold) and the build of
    # its kernels' precompiled header (~6 s cold) start on a thread when the backend meets a CPU
    # graph, before lowering; codegen then finds both done.
    from inductor_fuse import backend

    THREAD = "inductor_fuse-cpp-toolchain"
    callers = []
    real_isas = backend.valid_vec_isa_list
    real_load = backend.CppPythonBindingsCodeCache.load_pybinding
    kernels = []

    def spy_isas():
        callers.append(("isas", threading.current_thread().name))
        return real_isas()

    def spy_load(*args, **kwargs):  # Inductor's own compiles may come this way too
        kernel = real_load(*args, **kwargs)
        callers.append(("header", threading.current_thread().name))
        if threading.current_thread().name == THREAD:
            kernels.append(kernel)
        return kernel

    monkeypatch.setattr(backend, "valid_vec_isa_list", spy_isas)
    monkeypatch.setattr(backend.CppPythonBindingsCodeCache, "load_pybinding", spy_load)
    backend._prepare_cpp_toolchain.cache_clear()
    with torch.no_grad():
        torch.compile(nn.Linear(8, 8).eval(), backend="inductor_fuse")(torch.randn(2, 8))
    for t in threading.enumerate():
        if t.name == THREAD:
            t.join()
    on_thread = [what for what, thread in callers if thread == THREAD]
    assert on_thread == ["isas", "header"], callers  # the ISA list, then the header
    # The probe kernel is a real one of the prefix the graph's kernels include: it built and runs.
    assert "#include <torch/csrc/inductor/cpp_prefix.h>" in backend._PREFIX_PROBE
    x = torch.zeros(1)
    kernels[0](x)
    assert x.item() == 1.0


def test_grouped_mm_is_recognised_and_a_cpu_graph_is_not_warned_about():
    # The GROUPED_MM_CUDA note is for CUDA graphs only (what was measured wrong there: docs/robustness.md);
    # its CUDA side is tests/test_transformers_sweep.py::test_grouped_mm_warning_gpu.
    from torch import fx

    from inductor_fuse.backend import GROUPED_MM_CUDA, calls_grouped_mm

    def experts(x, w, offs):
        return torch._grouped_mm(x, w, offs=offs) * 2

    assert calls_grouped_mm(fx.symbolic_trace(experts))
    assert not calls_grouped_mm(fx.symbolic_trace(lambda x: torch.mm(x, x) + 1))
    x = torch.randn(6, 16, dtype=torch.bfloat16)
    w = torch.randn(2, 16, 8, dtype=torch.bfloat16)
    offs = torch.tensor([2, 6], dtype=torch.int32)
    inductor_fuse.clear_reports()
    with torch.no_grad():
        got = torch.compile(experts, backend="inductor_fuse")(x, w, offs)
    want = torch.cat([x[:2] @ w[0], x[2:] @ w[1]]) * 2
    assert rel_err(got.float(), want.float()) < 1e-2
    notes = [n for rep in inductor_fuse.all_reports() for n in rep.notes]
    assert notes and GROUPED_MM_CUDA not in notes, notes


_seen_pdl_early: list[bool] = []


@torch.library.custom_op("inductor_fuse_test::record_pdl_early", mutates_args=())
def _record_pdl_early(x: torch.Tensor) -> torch.Tensor:
    """An op whose body, run inside a compiled graph, notes what the kernels launched there would read."""
    from inductor_fuse import config

    _seen_pdl_early.append(config.pdl_early_wanted())
    return x.clone()


@_record_pdl_early.register_fake
def _(x):
    return torch.empty_like(x)


class _QuantizedProbe(nn.Module):
    def __init__(self, fmt: str = "q8_0"):
        super().__init__()
        from inductor_fuse.quant import QuantizedLinear

        self.fc1 = QuantizedLinear.from_float(nn.Linear(64, 96), fmt)
        self.fc2 = nn.Linear(96, 32)

    def forward(self, x):
        return self.fc2(torch.ops.inductor_fuse_test.record_pdl_early(torch.relu(self.fc1(x))))


def test_pdl_early_auto_is_chosen_per_graph_by_its_linear_weights(monkeypatch):
    """The backend sizes a graph's linear weights (qlinear planes and bias, the float linear's weight
    and bias) and, under pdl_early "auto", sets the early trigger for the kernels its calls launch:
    off in a graph under config.PDL_EARLY_MIN_WEIGHT_BYTES, on from it; the graph's calls only."""
    from inductor_fuse import backend, config

    torch.manual_seed(0)
    x = torch.randn(2, 64)
    small = _QuantizedProbe().eval()
    fc1_bytes = sum(p.nbytes for p in small.fc1.planes) + small.fc1.bias.nbytes
    fc2_bytes = small.fc2.weight.nbytes + small.fc2.bias.nbytes
    big = _QuantizedProbe().eval()
    with torch.no_grad(), config.patch(pdl_early="auto"):
        _seen_pdl_early.clear()
        torch.compile(small, backend="inductor_fuse")(x)
        (note,) = [n for n in inductor_fuse.last_report().notes if "pdl_early" in n]
        assert _seen_pdl_early and not any(_seen_pdl_early), _seen_pdl_early
        assert f"linear weights {(fc1_bytes + fc2_bytes) / 2**30:.2f} GiB: pdl_early auto off" in note, note
        # the threshold as if these 2 linears were a large model's: read when a graph compiles
        monkeypatch.setattr(config, "PDL_EARLY_MIN_WEIGHT_BYTES", fc1_bytes + fc2_bytes)
        _seen_pdl_early.clear()
        got = torch.compile(big, backend="inductor_fuse")(x)
        assert _seen_pdl_early and all(_seen_pdl_early), _seen_pdl_early
        assert any("pdl_early auto on" in n for n in inductor_fuse.last_report().notes)
        assert rel_err(got, big(x)) < 1e-5
        assert config.pdl_early_wanted()  # outside the graph's calls: on again
        # a graph of module attributes (dotted names), fc2 a call_module there: fc1's planes and bias
        assert backend._linear_weight_bytes(torch.fx.symbolic_trace(big)) == fc1_bytes

    class Attend(nn.Module):  # a KV cache that an op of ours reads is not a linear's weight
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.zeros(1, 1, 8, 64))
            self.register_buffer("v", torch.zeros(1, 1, 8, 64))

        def forward(self, q, mask):
            return torch.ops.inductor_fuse.decode_attention(q, self.k, self.v, mask, 0.125, 0.0)

    assert backend._linear_weight_bytes(torch.fx.symbolic_trace(Attend())) == 0
