"""One registration per rule family: the decorator is the only source of the family list, its
option key, its report counter and its pass order."""

import pytest
import torch
import torch.nn as nn

import inductor_fuse
from inductor_fuse import report
from inductor_fuse.options import FuseOptions
from inductor_fuse.patterns import RulePass, registry
from inductor_fuse.patterns.registry import GRAPH_WALK, PATTERN_MATCHER, family_names, rule_family


@pytest.fixture
def scratch_registry(monkeypatch):
    """The real registry's families plus whatever the test registers, restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_siblings_is_registered_as_a_graph_walk():
    (fam,) = [f for f in registry.families() if f.name == "siblings"]
    assert fam.kind == GRAPH_WALK and fam.run is inductor_fuse.patterns.siblings.fuse_sibling_linears
    assert inductor_fuse.FAMILIES == family_names()


def test_act_quant_runs_after_the_families_whose_output_it_reads():
    order = {f.name: f.order for f in registry.families()}
    assert order["glu"] < order["act_quant"] and order["siblings"] < order["act_quant"] < order["dequant_cpu"]
    (fam,) = [f for f in registry.families() if f.name == "act_quant"]
    assert fam.kind == GRAPH_WALK and fam.run is inductor_fuse.patterns.act_quant.share_act_quant


def test_a_registered_family_is_an_option_a_counter_and_a_pass_in_order(scratch_registry):
    calls = []

    @rule_family("first", order=-1, kind=PATTERN_MATCHER, doc="test family that runs first")
    def first(graph):
        calls.append("first")
        report.current().rewrites.append(report.Rewrite("first", "x", ("n",), "d"))

    @rule_family("last", order=10_000, kind=GRAPH_WALK, doc="test family that runs last")
    def last(graph):
        calls.append("last")

    names = family_names()
    assert names[0] == "first" and names[-1] == "last" and "siblings" in names
    assert FuseOptions.from_dict({"last": False}).enabled() == names[:-1]
    with report.collecting() as rep:
        RulePass(FuseOptions.from_dict({"siblings": False}).enabled())(torch.fx.symbolic_trace(nn.ReLU()).graph)
    # each family runs once, in registration order (no trial run: a failure restores the graph)
    assert calls == ["first", "last"]
    assert list(rep.counts) == list(names) and rep.counts["first"] == 1


def test_registration_errors(scratch_registry):
    with pytest.raises(ValueError, match="registered twice"):
        rule_family("siblings", order=12345, kind=GRAPH_WALK, doc="d")(lambda g: None)
    with pytest.raises(ValueError, match="order 20 is taken"):
        rule_family("other", order=20, kind=GRAPH_WALK, doc="d")(lambda g: None)
    with pytest.raises(ValueError, match="kind must be"):
        rule_family("other", order=1, kind="regex", doc="d")


def test_unknown_option_names_the_registered_families():
    # every family file registered, in pass order
    assert family_names() == ("glu", "siblings", "conv1d", "decode_attention", "rope_cache", "act_quant", "dequant_cpu")
    listed = (
        r"valid options are \['glu', 'siblings', 'conv1d', 'decode_attention', 'rope_cache', 'act_quant', "
        r"'dequant_cpu'\]"
    )
    with pytest.raises(ValueError, match=listed):
        FuseOptions.from_dict({"silu": True})
    with pytest.raises(TypeError, match="must be a bool"):
        FuseOptions.from_dict({"siblings": 1})


def test_the_cache_key_holds_the_settings_a_rewrite_reads():
    """The act_quant rule asks which kernel reads an activation, which small_m and exact_matvec
    decide: the FX graph cache must not serve a graph rewritten under other settings."""
    from inductor_fuse import config

    rule_pass = RulePass(FuseOptions().enabled())
    base = rule_pass.uuid()
    assert rule_pass.uuid() == base
    for change in ({"small_m": "off"}, {"small_m": "sync"}, {"exact_matvec": True}):
        with config.patch(**change):
            assert rule_pass.uuid() != base, change
    with config.patch(no_tune=True, tune=True):  # read at run time only
        assert rule_pass.uuid() == base
