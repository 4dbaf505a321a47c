"""A failure of ours never fails the user's compile: a rule that raises is skipped for that graph,
any other error of a compile with rules falls back to stock Inductor; both are reported and
logged at WARNING, and the result still equals eager."""

import dataclasses
import logging

import pytest
import torch
from numerics import rel_err
from toy_models import TinyLlama

import inductor_fuse
import inductor_fuse.patterns as patterns
import inductor_fuse.patterns.siblings as siblings
from inductor_fuse.patterns import registry


def run(model, x):
    with torch.no_grad():
        return rel_err(torch.compile(model, backend="inductor_fuse")(x), model(x))


def test_a_rule_that_raises_is_skipped(monkeypatch, caplog):
    def broken(graph):
        raise RuntimeError("rule bug")

    fam = registry._REGISTRY["siblings"]
    monkeypatch.setitem(registry._REGISTRY, "siblings", dataclasses.replace(fam, run=broken))
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        assert run(TinyLlama(n_layers=1).eval(), torch.randn(1, 4, 64)) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 0
    (failure,) = rep.failures
    assert failure.family == "siblings" and failure.error == "RuntimeError: rule bug"
    assert (
        failure.where.startswith("patterns/__init__.py:")
        and "test_fallback.py" in failure.where
        and "in broken)" in failure.where
    )
    assert "FAILED siblings" in str(rep) and "FAILED, skipped: siblings" in rep.summary()
    assert any("rule family 'siblings' raised RuntimeError: rule bug" in r.message for r in caplog.records)


def test_a_rule_that_raises_half_way_leaves_the_graph_intact(monkeypatch):
    # The rule rewrites one group (layer 0's q|k|v), then raises on the next: the graph is restored
    # from the copy taken before the families ran, the families before siblings run again, and
    # their report entries are not doubled.
    real = siblings._fuse
    calls = []

    def fuse_then_fail(graph, lins):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("second group")
        return real(graph, lins)

    monkeypatch.setattr(siblings, "_fuse", fuse_then_fail)
    assert run(TinyLlama(n_layers=2).eval(), torch.randn(1, 4, 64)) < 1e-5
    rep = inductor_fuse.last_report()
    assert len(calls) == 2 and rep.counts["siblings"] == 0 and rep.failures[0].where.endswith("in fuse_then_fail)")
    assert rep.counts["glu"] == 2 and len(rep.failures) == 1  # glu ran twice, reported once


def test_an_error_outside_the_rules_falls_back_to_stock(monkeypatch, caplog):
    def broken_pass(self, graph):
        raise AssertionError("pass bug")

    monkeypatch.setattr(patterns.RulePass, "__call__", broken_pass)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        assert run(TinyLlama(n_layers=1).eval(), torch.randn(1, 4, 64)) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 0 and rep.failures[0].family == "backend"
    assert "AssertionError: pass bug" in rep.failures[0].error
    assert any("compiling this graph with stock Inductor" in r.message for r in caplog.records)


def test_graph_needing_gradients_warns_once(caplog):
    from inductor_fuse import backend

    backend._warn_once.cache_clear()
    model = TinyLlama(n_layers=1)
    x = torch.randn(1, 4, 64)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        for _ in range(2):
            out = torch.compile(TinyLlama(n_layers=1), backend="inductor_fuse")(x)
            out.sum().backward()  # training still works, through stock Inductor
    warnings = [r for r in caplog.records if "graph needs gradients" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert backend.NEEDS_GRAD in inductor_fuse.last_report().notes
    assert rel_err(torch.compile(model, backend="inductor_fuse")(x), model(x)) < 1e-5


def test_unsupported_torch_compiles_stock(monkeypatch, caplog):
    from inductor_fuse import backend

    monkeypatch.setattr(backend, "TORCH_VERSION", (2, 10))
    backend._warn_once.cache_clear()
    model = TinyLlama(n_layers=1).eval()
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        assert run(model, torch.randn(1, 4, 64)) < 1e-5
    assert inductor_fuse.last_report().counts["siblings"] == 0
    assert backend.OLD_TORCH in inductor_fuse.last_report().notes
    assert any("older than 2.11" in r.message for r in caplog.records)


@pytest.mark.parametrize("options", [{"bogus": True}, {"siblings": "yes"}])
def test_bad_options_fail_at_the_first_call(options):
    # torch.compile does not hand a third-party backend its options before the first call:
    # they are validated then, and Dynamo wraps the ValueError / TypeError in
    # BackendCompilerFailed. make_backend validates at once (test_backend.py).
    compiled = torch.compile(torch.nn.Linear(8, 8), backend="inductor_fuse", options=options)  # no error yet
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        compiled(torch.randn(2, 8))
    assert isinstance(info.value.inner_exception, (ValueError, TypeError))
    assert "inductor_fuse option" in str(info.value)
