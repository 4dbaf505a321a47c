"""inductor_fuse/freezing.py: the incremental fake-tensor propagation that Inductor's freezing passes
use inside our compiles. Each test checks the values it leaves against torch's full propagation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._guards import detect_fake_mode
from torch._inductor.fx_passes import freezing_patterns
from torch.fx.experimental.proxy_tensor import make_fx
from toy_models import TinyLlama

from inductor_fuse import config, freezing


def _graph():
    """A fake-traced graph with meta["val"] on every node and one get_attr constant (its weight)."""
    w = torch.randn(24, 16)

    def f(x, b):
        h = F.linear(x, w) + b
        return torch.relu(h).sum(-1), h.t()

    gm = make_fx(f, tracing_mode="fake", _allow_non_fake_inputs=True)(torch.randn(3, 16), torch.randn(24))
    inputs = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
    return gm, inputs


def _meta(gm):
    out = {}
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        leaves = val if isinstance(val, (tuple, list)) else [val]
        out[n.name] = [
            (tuple(v.shape), tuple(v.stride()), v.dtype) if isinstance(v, torch.Tensor) else v for v in leaves
        ]
    return out


def _full(gm, inputs):
    ref = copy.deepcopy(gm)
    freezing._full_fake_tensor_prop(ref, inputs, True)
    return _meta(ref)


def _count_runs(monkeypatch):
    runs = []
    real = freezing._IncrementalProp.run_node

    def spy(self, n):
        before = self.ran
        result = real(self, n)
        if self.ran > before:
            runs.append(n.name)
        return result

    monkeypatch.setattr(freezing._IncrementalProp, "run_node", spy)
    return runs


def test_an_unchanged_graph_runs_nothing(monkeypatch):
    gm, inputs = _graph()
    assert gm.graph.find_nodes(op="get_attr")
    expected = _full(gm, inputs)
    runs = _count_runs(monkeypatch)
    assert freezing.incremental_fake_tensor_prop(gm, inputs, True) is detect_fake_mode(inputs)
    assert runs == []
    assert _meta(gm) == expected


def test_a_constant_with_other_strides_is_recomputed_with_its_users(monkeypatch):
    gm, inputs = _graph()
    (const,) = gm.graph.find_nodes(op="get_attr")
    w = getattr(gm, const.target)
    setattr(gm, const.target, w.t().contiguous().t())  # the same values and shape, column-major
    expected = _full(gm, inputs)
    runs = _count_runs(monkeypatch)
    freezing.incremental_fake_tensor_prop(gm, inputs, True)
    assert const.name in runs and const.meta["val"].stride() == (1, 24)
    assert _meta(gm) == expected


def test_a_node_without_a_value_and_the_users_of_a_changed_constant_are_recomputed(monkeypatch):
    gm, inputs = _graph()
    (const,) = gm.graph.find_nodes(op="get_attr")
    # a constant folded to another shape: [24, 16] -> [20, 16]; everything downstream changes
    setattr(gm, const.target, torch.randn(20, 16))
    # and a new node with no value yet, on an input that did not change
    (x, b) = gm.graph.find_nodes(op="placeholder")
    with gm.graph.inserting_after(x):
        neg = gm.graph.call_function(torch.ops.aten.neg.default, (x,))
    out = gm.graph.find_nodes(op="output")[0]
    out.args = ((*out.args[0], neg),)
    for n in gm.graph.nodes:  # b [24] no longer broadcasts against [3, 20]: drop the add
        if n.target is torch.ops.aten.add.Tensor:
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
            break
    gm.recompile()
    expected = _full(gm, inputs)
    runs = _count_runs(monkeypatch)
    freezing.incremental_fake_tensor_prop(gm, inputs, True)
    assert _meta(gm) == expected
    assert tuple(gm.graph.find_nodes(op="get_attr")[0].meta["val"].shape) == (20, 16)
    assert neg.name in runs
    users = [n.name for n in gm.graph.nodes if n.op == "call_function" and n is not neg]
    assert set(users) <= set(runs)  # every node downstream of the changed constant ran


def test_a_value_from_another_fake_mode_is_recomputed(monkeypatch):
    gm, inputs = _graph()
    expected = _full(gm, inputs)
    relu = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.relu.default)
    with torch._subclasses.FakeTensorMode() as other:
        relu.meta["val"] = other.from_tensor(torch.empty(relu.meta["val"].shape))
    runs = _count_runs(monkeypatch)
    freezing.incremental_fake_tensor_prop(gm, inputs, True)
    assert relu.name in runs
    assert relu.meta["val"].fake_mode is detect_fake_mode(inputs)
    assert _meta(gm) == expected


def test_a_failure_or_the_knob_runs_the_full_propagation(monkeypatch):
    gm, inputs = _graph()
    expected = _full(gm, inputs)
    full_calls = []
    real_full = freezing._full_fake_tensor_prop

    def full(*args):
        full_calls.append(1)
        return real_full(*args)

    monkeypatch.setattr(freezing, "_full_fake_tensor_prop", full)

    def broken(self, n):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(freezing._IncrementalProp, "run_node", broken)
        freezing.incremental_fake_tensor_prop(gm, inputs, True)
    assert full_calls == [1] and _meta(gm) == expected
    with config.patch(full_fake_prop=True):
        freezing.incremental_fake_tensor_prop(gm, inputs, True)
    assert full_calls == [1, 1] and _meta(gm) == expected


@pytest.mark.parametrize("full", [False, True])
def test_our_compile_uses_it_and_torch_gets_its_own_back(monkeypatch, full):
    calls = []
    real = freezing.incremental_fake_tensor_prop

    def spy(gm, inputs, force=False):
        calls.append(len(gm.graph.nodes))
        return real(gm, inputs, force)

    monkeypatch.setattr(freezing, "incremental_fake_tensor_prop", spy)
    original = freezing_patterns.fake_tensor_prop
    model = TinyLlama(n_layers=2).eval()
    x = torch.randn(1, 5, 64)
    with torch.no_grad(), config.patch(full_fake_prop=full):
        expected = model(x)
        out = torch.compile(model, backend="inductor_fuse")(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert len(calls) >= 2  # freezing_passes propagates before and after its constant folds
    assert freezing_patterns.fake_tensor_prop is original


def test_the_frozen_graph_is_the_one_the_full_propagation_gives(monkeypatch, tmp_path):
    # Inductor's FX graph cache keys the graph after freezing: a second model of the same shape compiled
    # with the incremental propagation hits the entry the full propagation wrote, so the two graphs
    # are the same code. An empty cache directory, so no earlier entry can answer.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))

    def counts():  # looked up each time: Dynamo may replace the Counter
        c = torch._dynamo.utils.counters["inductor"]
        return c["fxgraph_cache_hit"], c["fxgraph_cache_miss"]

    x = torch.randn(1, 3, 64)
    results = []
    for full in (True, False):
        model = TinyLlama(n_layers=3, hidden=80).eval()
        before = counts()
        with torch.no_grad(), config.patch(full_fake_prop=full):
            torch.testing.assert_close(torch.compile(model, backend="inductor_fuse")(x), model(x), rtol=1e-4, atol=1e-5)
        after = counts()
        results.append((after[0] - before[0], after[1] - before[1]))
    assert results == [(0, 1), (1, 0)]
