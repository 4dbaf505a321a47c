"""The rule families: each registered once, by the decorator on its rule, the only list of them.

    @rule_family("siblings", order=20, kind=GRAPH_WALK, doc="N >= 2 linears reading one activation ...")
    def fuse_sibling_linears(graph: fx.Graph) -> int: ...

A family's name is its option key (``torch.compile(..., options={"siblings": False})``) and its
counter in the fusion report; ``order`` is when its pass runs, lowest first (a later family must
not steal the nodes an earlier one needs: GLU chains before siblings); ``kind`` says how it
matches:

- ``PATTERN_MATCHER``: a fixed-shape pattern, written with Inductor's pattern matcher
  (``register_replacement`` into a ``PatternMatcherPass``);
- ``GRAPH_WALK``: a variadic pattern (any number of sibling linears) that the pattern matcher
  cannot express, written as a walk over the FX graph.

``patterns/__init__.py`` imports each family's file, which registers it; adding a family is
one new file and that one import line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx

PATTERN_MATCHER = "pattern matcher"
GRAPH_WALK = "graph walk"


@dataclass(frozen=True)
class RuleFamily:
    name: str  # option key and report counter
    order: int  # passes run in ascending order
    kind: str  # PATTERN_MATCHER or GRAPH_WALK
    doc: str  # one line: what it rewrites
    run: Callable[[fx.Graph], object]  # rewrites the graph in place; records in report.current()


_REGISTRY: dict[str, RuleFamily] = {}


def rule_family(name: str, *, order: int, kind: str, doc: str) -> Callable:
    """Register the decorated function as the rule of family ``name``."""
    if kind not in (PATTERN_MATCHER, GRAPH_WALK):
        raise ValueError(f"rule family {name!r}: kind must be {PATTERN_MATCHER!r} or {GRAPH_WALK!r}, got {kind!r}")

    def register(run: Callable[[fx.Graph], object]) -> Callable[[fx.Graph], object]:
        if name in _REGISTRY:
            raise ValueError(f"rule family {name!r} is registered twice")
        if any(f.order == order for f in _REGISTRY.values()):
            raise ValueError(f"rule family {name!r}: order {order} is taken; passes need a strict order")
        _REGISTRY[name] = RuleFamily(name, order, kind, doc, run)
        return run

    return register


def families() -> tuple[RuleFamily, ...]:
    """The registered families, in the order their passes run."""
    return tuple(sorted(_REGISTRY.values(), key=lambda f: f.order))


def family_names() -> tuple[str, ...]:
    return tuple(f.name for f in families())
