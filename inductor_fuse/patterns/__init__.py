"""Rule families, one file each, registered by ``registry.rule_family`` on their rule. ``RulePass``
runs the enabled ones, in order, as Inductor's ``joint_custom_post_pass`` (before freezing; see
``graph_utils``)."""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from .. import report
from . import act_quant, conv1d, decode_attention, dequant_cpu, glu, rope_cache, siblings  # noqa: F401 -- registers the families; one name per family
from .registry import families

log = logging.getLogger("inductor_fuse")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@functools.cache
def plugin_hash() -> str:
    """SHA-256 over every source file of the package: a change to any rule or kernel changes it."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _rule_runs(name: str, rule, graph: fx.Graph) -> bool:
    """Run ``rule`` on a copy of ``graph`` first (report discarded): a rule that raises is
    skipped for this graph -- recorded in the report, logged at WARNING -- and the real graph is
    never left half rewritten. Rules are deterministic, so the real run then succeeds too (if it
    does not, the backend compiles the graph with stock Inductor)."""
    try:
        with report.discarding():
            rule(copy.deepcopy(graph))
        return True
    except Exception as e:  # noqa: BLE001 -- a failing rule must not fail the user's compile
        failure = report.Failure.of(name, e)
        report.current().failures.append(failure)
        log.warning(
            "inductor_fuse: rule family %r raised %s (at %s); skipped for this graph",
            name,
            failure.error,
            failure.where,
        )
        return False


class RulePass(CustomGraphPass):
    """The enabled rule families as one Inductor custom pass.

    ``uuid()`` hashes every file of the plugin plus the options, so Inductor's FX graph cache
    never reuses code compiled by another version of a rule or kernel.
    """

    def __init__(self, enabled: Sequence[str]):
        self.enabled = tuple(enabled)

    def __call__(self, graph: fx.Graph) -> None:
        for family in families():
            if family.name in self.enabled and _rule_runs(family.name, family.run, graph):
                family.run(graph)
                graph.lint()  # every family leaves a well-formed graph

    def uuid(self) -> str:
        return f"{plugin_hash()}-{self.enabled}"
