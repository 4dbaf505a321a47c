"""Rule family ``glu``: the gated MLP's ``act(gate(x)) * up(x)`` over quantized weights becomes one
``inductor_fuse.glu_qlinear``: one matvec that reads the gate and up weights once and writes only
the ``intermediate`` values (act and product in its epilogue).

    y = act(qlinear(x, G, bg, fmt)) * qlinear(x, U, bu, fmt)          act: SiLU or GELU-tanh
 =>
    y = glu_qlinear(x, interleave(G, U), interleave(bg, bu), fmt, act)

interleave puts gate row i and up row i at rows 2i and 2i + 1 of every plane (one program of the
matvec then holds both for its outputs); the planes are frozen, so freezing folds it into a
constant. Runs before ``siblings`` (order 10 < 20), which would otherwise concatenate gate and up.

The activation is recognised by what it computes, not by how it is spelled (graph_utils.activation_of,
shared with ``conv1d``): the pointwise nodes between the gate's output and the product (``F.silu``,
``nn.SiLU``, ``x * sigmoid(x)``, its ``x / (1 + exp(-x))`` decomposition,
``F.gelu(approximate="tanh")`` and its decomposition, the transformers ``ACT2FN`` modules, float32
round trips of a bf16 value) are evaluated in float64 on a probe of 257 points in [-8, 8] (dtype
casts taken as exact) and must equal SiLU or GELU-tanh to 1e-9; GELU with erf (4.7e-4 away) is not
GELU-tanh. Left alone, with the reason in the report: a
gate or up output with another reader, another activation, gate and up reading different inputs or
in different formats, weights not frozen, float weights (not built yet: ``siblings`` takes them).

A graph walk (``GRAPH_WALK``): an activation is any chain of pointwise nodes, which no fixed pattern
lists.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .. import report
from ..quant.op import GLU_ACTS  # (importing quant.op defines qlinear, matched, and glu_qlinear, emitted)
from .graph_utils import (
    activation_key,
    activation_of,
    call,
    copy_meta,
    first_not_frozen,
    frozen_placeholders,
    module_name,
    pointwise_chain,
    reads_stay_inside,
    val,
)
from .registry import GRAPH_WALK, rule_family

FAMILY = "glu"
aten = torch.ops.aten
qlinear = torch.ops.inductor_fuse.qlinear.default


def _match(mul: fx.Node, frozen: set[fx.Node]) -> tuple[str | None, tuple | None]:
    """(reason it does not fuse, None) or (None, (gate, up, act, chain))."""
    a, b = mul.args[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return "not a candidate", None
    for act_out, up in ((a, b), (b, a)):
        if up.target is not qlinear:
            continue
        found = pointwise_chain(act_out)
        if found is None or found[0].target is not qlinear or found[0] is up:
            continue
        gate, chain = found
        if len(up.users) != 1:
            return "the up projection's output has another reader", None
        if not reads_stay_inside(gate, chain, act_out) or set(act_out.users) != {mul}:
            return "the gate projection's output (or its activation) has another reader", None
        if activation_key(gate.args[0]) != activation_key(up.args[0]):
            return "gate and up read different inputs", None
        (xg, pg, bg, fg), (_, pu, bu, fu) = gate.args, up.args
        if fg != fu or [val(p).shape[1:] for p in pg] != [val(p).shape[1:] for p in pu]:
            return f"gate and up in different formats or K ({fg}, {fu})", None
        if (bg is None) != (bu is None):
            return "one of gate and up has a bias", None
        if val(mul).dtype != val(xg).dtype or [val(p).shape[0] for p in pg] != [val(p).shape[0] for p in pu]:
            return "gate and up of different widths or the product in another dtype", None
        why = first_not_frozen((*pg, *pu, bg, bu), frozen)
        if why is not None:
            return why, None
        act = activation_of(gate, chain, act_out)
        if act not in GLU_ACTS:  # (of graph_utils.ACTIVATIONS, those glu_qlinear has)
            return "the activation is neither SiLU nor GELU-tanh", None
        return None, (gate, up, act, chain)
    return "not a candidate", None


def _interleave(graph: fx.Graph, g: fx.Node, u: fx.Node) -> fx.Node:
    """Rows of g and u alternating: [g0, u0, g1, u1, ...] (a constant once frozen)."""
    shape = list(val(g).shape)
    stacked = call(graph, aten.stack.default, [g, u], 1)
    return call(graph, aten.view.default, stacked, [2 * shape[0], *shape[1:]])


@rule_family(
    FAMILY,
    order=10,
    kind=GRAPH_WALK,  # the activation is any pointwise chain, recognised by evaluating it
    doc="act(gate(x)) * up(x) over quantized weights (SiLU, GELU-tanh) becomes one matvec with the GLU epilogue",
)
def fuse_glu(graph: fx.Graph) -> int:
    rep = report.current()
    frozen = frozen_placeholders(graph)
    rewrites = 0
    for mul in list(graph.find_nodes(op="call_function", target=aten.mul.Tensor)):
        if mul.graph is not graph or len(mul.args) < 2:
            continue
        why, m = _match(mul, frozen)
        if why == "not a candidate":
            continue
        if why is not None:
            rep.skipped.append(report.Skip(FAMILY, (mul.name,), why))
            continue
        gate, up, act, chain = m
        x, pg, bg, fmt = gate.args
        pu, bu = up.args[1], up.args[2]
        with graph.inserting_before(mul):
            planes = [_interleave(graph, g, u) for g, u in zip(pg, pu)]
            bias = _interleave(graph, bg, bu) if bg is not None else None
            out = call(graph, torch.ops.inductor_fuse.glu_qlinear.default, x, planes, bias, fmt, act)
        copy_meta(gate, out)  # labelled as the gate projection
        mul.replace_all_uses_with(out)
        for dead in [mul, *reversed(chain), up, gate]:
            if not dead.users:
                graph.erase_node(dead)
        inter = val(pg[0]).shape[0]
        label = f"({module_name(gate)},{module_name(up)})"
        detail = f"x{list(val(x).shape)} -> {act}(gate) * up, [{inter}] x 2 interleaved, {fmt}"
        rep.rewrites.append(report.Rewrite(FAMILY, label, (gate.name, up.name), detail))
        rewrites += 1
    return rewrites
