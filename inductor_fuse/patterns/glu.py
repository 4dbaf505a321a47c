"""Rule family ``glu``: the gated MLP's ``act(gate(x)) * up(x)`` becomes one op that reads the gate
and up weights once and writes only the ``intermediate`` values (act and product in its epilogue).

    quantized:  y = act(qlinear(x, G, bg, fmt)) * qlinear(x, U, bu, fmt)
             => y = glu_qlinear(x, interleave(G, U), interleave(bg, bu), fmt, act)
    float:      y = act(x2 @ G^T + bg) * (x2 @ U^T + bu)        (aten mm / addmm, each perhaps
                                                                 behind one view to x's leading dims)
             => y = view(glu_linear(x2, interleave(G, U), interleave(bg, bu), act))
    act: SiLU or GELU-tanh

interleave puts gate row i and up row i at rows 2i and 2i + 1 of every plane / of the weight (one
program of the kernel then holds both for its outputs); the weights are frozen, so freezing folds
it into a constant. Runs before ``siblings`` (order 10 < 20), which would otherwise concatenate
gate and up.

The activation is recognised by what it computes, not by how it is spelled (graph_utils.activation_of,
shared with ``conv1d``): the pointwise nodes between the gate's output and the product (``F.silu``,
``nn.SiLU``, ``x * sigmoid(x)``, its ``x / (1 + exp(-x))`` decomposition,
``F.gelu(approximate="tanh")`` and its decomposition, the transformers ``ACT2FN`` modules, float32
round trips of a bf16 value) are evaluated in float64 on a probe of 257 points in [-8, 8] (dtype
casts taken as exact) and must equal SiLU or GELU-tanh to 1e-9; GELU with erf (4.7e-4 away) is not
GELU-tanh. Left alone, with the reason in the report: a gate or up output with another reader,
another activation, gate and up reading different inputs, in different formats or dtypes, one
float and one quantized, weights not frozen.

A graph walk (``GRAPH_WALK``): an activation is any chain of pointwise nodes, which no fixed pattern
lists.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.fx as fx

from .. import glu as _glu_op  # noqa: F401 -- defines glu_linear, emitted for float weights
from .. import report
from ..quant.op import FLOAT_DTYPES, GLU_ACTS  # (importing quant.op defines qlinear, matched, and glu_qlinear, emitted)
from .graph_utils import (
    Linear,
    activation_key,
    activation_of,
    as_linear,
    call,
    copy_meta,
    first_not_frozen,
    frozen_placeholders,
    module_name,
    pointwise_chain,
    reads_stay_inside,
    transposed_source,
    val,
)
from .registry import GRAPH_WALK, rule_family

FAMILY = "glu"
aten = torch.ops.aten
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


class _Operand(NamedTuple):
    """A product operand that is a linear: the linear itself, or one view of a float linear (to x's
    leading dims) that is the linear's only reader."""

    out: fx.Node  # what the product (or the activation) reads
    lin: Linear

    @property
    def nodes(self) -> tuple[fx.Node, ...]:  # out first
        return (self.out,) if self.out is self.lin.node else (self.out, self.lin.node)


def _operand(node: fx.Node) -> _Operand | None:
    inner = node
    if node.op == "call_function" and node.target in _VIEWS and isinstance(node.args[0], fx.Node):
        inner = node.args[0]
        if len(inner.users) != 1:
            return None
    lin = as_linear(inner)
    if lin is None or (inner is not node and lin.fmt is not None):  # a qlinear reads x's leading dims itself
        return None
    return _Operand(node, lin)


def _match(mul: fx.Node, frozen: set[fx.Node]) -> tuple[str | None, tuple | None]:
    """(reason it does not fuse, None) or (None, (gate, up, act, chain)), gate and up _Operand."""
    a, b = mul.args[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return "not a candidate", None
    for act_out, up_out in ((a, b), (b, a)):
        up = _operand(up_out)
        if up is None:
            continue
        found = pointwise_chain(act_out)
        gate = _operand(found[0]) if found is not None else None
        if gate is None or gate.out is up.out:
            continue
        chain = found[1]
        g, u = gate.lin, up.lin
        if len(up.out.users) != 1:
            return "the up projection's output has another reader", None
        if not reads_stay_inside(gate.out, chain, act_out) or set(act_out.users) != {mul}:
            return "the gate projection's output (or its activation) has another reader", None
        if activation_key(g.x) != activation_key(u.x):
            return "gate and up read different inputs", None
        shapes_g, shapes_u = ([tuple(val(w).shape) for w in lin.weights] for lin in (g, u))
        if g.fmt != u.fmt or [val(w).dtype for w in g.weights] != [val(w).dtype for w in u.weights]:
            return f"gate and up in different formats ({g.fmt or 'float'}, {u.fmt or 'float'})", None
        if shapes_g != shapes_u:
            return "gate and up of different widths or K", None
        if (g.bias is None) != (u.bias is None):
            return "one of gate and up has a bias", None
        if not (val(gate.out).shape == val(up.out).shape == val(mul).shape):
            return "gate, up and their product of different shapes (a broadcast)", None
        if val(mul).dtype != val(g.x).dtype:
            return "the product in another dtype than the input", None
        x_dtype = val(g.x).dtype
        if g.fmt is None and not (x_dtype == val(g.weights[0]).dtype and x_dtype in FLOAT_DTYPES):
            return "float gate and up of another dtype than their input", None
        why = first_not_frozen((*g.weights, *u.weights, g.bias, u.bias), frozen)
        if why is not None:
            return why, None
        act = activation_of(gate.out, chain, act_out)
        if act not in GLU_ACTS:  # (of graph_utils.ACTIVATIONS, those glu_qlinear has)
            return "the activation is neither SiLU nor GELU-tanh", None
        return None, (gate, up, act, chain)
    return "not a candidate", None


def _untransposed(graph: fx.Graph, wt: fx.Node) -> fx.Node:
    """W [N, K] of a float linear's W^T [K, N] operand."""
    w = transposed_source(wt)
    return w if w is not None else call(graph, aten.permute.default, wt, [1, 0])


def _interleave(graph: fx.Graph, g: fx.Node, u: fx.Node) -> fx.Node:
    """Rows of g and u alternating: [g0, u0, g1, u1, ...] (a constant once frozen)."""
    shape = list(val(g).shape)
    stacked = call(graph, aten.stack.default, [g, u], 1)
    return call(graph, aten.view.default, stacked, [2 * shape[0], *shape[1:]])


@rule_family(
    FAMILY,
    order=10,
    kind=GRAPH_WALK,  # the activation is any pointwise chain, recognised by evaluating it
    doc="act(gate(x)) * up(x) (SiLU, GELU-tanh), quantized or float, becomes one kernel with the GLU epilogue",
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
        g, u = gate.lin, up.lin
        with graph.inserting_before(mul):
            bias = _interleave(graph, g.bias, u.bias) if g.bias is not None else None
            if g.fmt is not None:
                planes = [_interleave(graph, pg, pu) for pg, pu in zip(g.weights, u.weights)]
                out = call(graph, torch.ops.inductor_fuse.glu_qlinear.default, g.x, planes, bias, g.fmt, act)
            else:
                weight = _interleave(graph, _untransposed(graph, g.weights[0]), _untransposed(graph, u.weights[0]))
                out = call(graph, torch.ops.inductor_fuse.glu_linear.default, g.x, weight, bias, act)
            if gate.out is not g.node:  # the gate's view (to x's leading dims), on the GLU's output
                out = call(graph, gate.out.target, out, gate.out.args[1])
        copy_meta(gate.out, out)  # labelled as the gate projection
        mul.replace_all_uses_with(out)
        for dead in [mul, *reversed(chain), *up.nodes, *gate.nodes]:
            if not dead.users:
                graph.erase_node(dead)
        kind = g.fmt or str(val(g.weights[0]).dtype).removeprefix("torch.")
        label = f"({module_name(g.node)},{module_name(u.node)})"
        detail = f"x{list(val(g.x).shape)} -> {act}(gate) * up, [{g.out_features}] x 2 interleaved, {kind}"
        rep.rewrites.append(report.Rewrite(FAMILY, label, (g.node.name, u.node.name), detail))
        rewrites += 1
    return rewrites
