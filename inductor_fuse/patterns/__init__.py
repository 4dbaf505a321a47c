"""Rule families, one file each, registered by ``registry.rule_family`` on their rule. ``RulePass``
runs the enabled ones, in order, as Inductor's ``joint_custom_post_pass`` (before freezing; see
``graph_utils``)."""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from .. import config as knobs
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


def _restore(graph: fx.Graph, saved: fx.Graph) -> None:
    """Make ``graph`` (in place: the owning module keeps it) a copy of ``saved`` again."""
    for node in list(graph.nodes)[::-1]:  # users before what they read
        graph.erase_node(node)
    out = graph.graph_copy(saved, {})
    # (torch 2.11's reversed(graph.nodes) is an iterable, not an iterator: no next() on it)
    (output,) = saved.find_nodes(op="output")
    graph.output(out, output.type).meta = dict(output.meta)


class RulePass(CustomGraphPass):
    """The enabled rule families as one Inductor custom pass.

    ``uuid()`` hashes every file of the plugin plus the options and the settings a rewrite reads
    (``config.rewrite_key``), so Inductor's FX graph cache never reuses code compiled by another
    version of a rule or kernel, or under other settings.
    """

    def __init__(self, enabled: Sequence[str]):
        self.enabled = tuple(enabled)

    def __call__(self, graph: fx.Graph) -> None:
        """Run the enabled families in order on ``graph``. A family that raises is skipped for this
        graph -- recorded in the report, logged at WARNING -- and the graph is never left half
        rewritten: it is restored from a copy taken first, and the families before the failed
        one run again (rules are deterministic), their first entries in the report dropped. (A
        copy per family, and a trial run of each on it, cost the Gemma-3-270M decode graph 1.9 s
        of a 2.9 s pass on a 2-core CPU.)"""
        skip: set[str] = set()
        rep = report.current()
        t0 = time.perf_counter()
        saved = copy.deepcopy(graph)
        rep.add_seconds("rules/graph copy", time.perf_counter() - t0)
        mark = (len(rep.rewrites), len(rep.skipped), len(rep.notes))
        while True:
            for family in families():
                if family.name not in self.enabled or family.name in skip:
                    continue
                t0 = time.perf_counter()
                try:
                    family.run(graph)
                    graph.lint()  # every family leaves a well-formed graph
                except Exception as e:  # noqa: BLE001 -- a failing rule must not fail the user's compile
                    failure = report.Failure.of(family.name, e)
                    log.warning(
                        "inductor_fuse: rule family %r raised %s (at %s); skipped for this graph",
                        family.name,
                        failure.error,
                        failure.where,
                    )
                    del rep.rewrites[mark[0] :], rep.skipped[mark[1] :], rep.notes[mark[2] :]
                    rep.failures.append(failure)
                    skip.add(family.name)
                    _restore(graph, saved)
                    break
                finally:
                    rep.add_seconds(f"rules/{family.name}", time.perf_counter() - t0)
            else:
                return

    def uuid(self) -> str:
        return f"{plugin_hash()}-{self.enabled}-{knobs.rewrite_key()}"
