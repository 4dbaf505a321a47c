"""Rule family ``glu``: the gated MLP's ``act(gate(x)) * up(x)`` over quantized weights becomes one
``inductor_fuse.glu_qlinear``: one matvec that reads the gate and up weights once and writes only
the ``intermediate`` values (act and product in its epilogue).

    y = act(qlinear(x, G, bg, fmt)) * qlinear(x, U, bu, fmt)          act: SiLU or GELU-tanh
 =>
    y = glu_qlinear(x, interleave(G, U), interleave(bg, bu), fmt, act)

interleave puts gate row i and up row i at rows 2i and 2i + 1 of every plane (one program of the
matvec then holds both for its outputs); the planes are frozen, so freezing folds it into a
constant. Runs before ``siblings`` (order 10 < 20), which would otherwise concatenate gate and up.

The activation is recognised by what it computes, not by how it is spelled: the pointwise nodes
between the gate's output and the product (``F.silu``, ``nn.SiLU``, ``x * sigmoid(x)``, its
``x / (1 + exp(-x))`` decomposition, ``F.gelu(approximate="tanh")`` and its decomposition, the
transformers ``ACT2FN`` modules, float32 round trips of a bf16 value) are evaluated in float64 on a
probe of 257 points in [-8, 8] (dtype casts taken as exact) and must equal SiLU or GELU-tanh to
1e-9; GELU with erf (4.7e-4 away) is not GELU-tanh. Left alone, with the reason in the report: a
gate or up output with another reader, another activation, gate and up reading different inputs or
in different formats, weights not frozen, float weights (not built yet: ``siblings`` takes them).

A graph walk (``GRAPH_WALK``): an activation is any chain of pointwise nodes, which no fixed pattern
lists.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .. import report
from ..quant import op  # noqa: F401 -- defines qlinear (matched) and glu_qlinear (emitted)
from .graph_utils import activation_key, call, copy_meta, first_not_frozen, frozen_placeholders, module_name, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "glu"
MAX_ACT_NODES = 32  # pointwise nodes of one activation, at most
aten = torch.ops.aten
prims = torch.ops.prims
qlinear = torch.ops.inductor_fuse.qlinear.default
_PROBE = torch.linspace(-8.0, 8.0, 257, dtype=torch.float64)
_ACTS = {"silu": F.silu(_PROBE), "gelu_tanh": F.gelu(_PROBE, approximate="tanh")}


def _pointwise(node: fx.Node) -> bool:
    t = node.target
    return node.op == "call_function" and (
        t is prims.convert_element_type.default
        or (isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags)
    )


def _act_chain(out: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(root, chain): the one non-pointwise node `out` is a pointwise function of, and the pointwise
    nodes in between (graph order); None when out reads more than one such node."""
    chain, root, stack = set(), None, [out]
    while stack:
        n = stack.pop()
        if n in chain or n is root:
            continue
        if not _pointwise(n) or not n.all_input_nodes:
            if root is not None:
                return None
            root = n
            continue
        chain.add(n)
        if len(chain) > MAX_ACT_NODES:
            return None
        stack.extend(n.all_input_nodes)
    if root is None:
        return None
    order = {n: i for i, n in enumerate(out.graph.nodes)}
    return root, sorted(chain, key=order.__getitem__)


def _which_act(root: fx.Node, chain: list[fx.Node], out: fx.Node) -> str | None:
    """ "silu" or "gelu_tanh" when the chain computes that of root (evaluated on the probe), else None."""
    with unset_fake_temporarily():  # the pass runs under the compile's fake mode: real tensors here
        env = {root: _PROBE}
        try:
            for n in chain:
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
                if n.target is prims.convert_element_type.default:
                    env[n] = args[0]  # casts are exact here: the function, not its rounding, is asked
                else:
                    kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
                    env[n] = n.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 -- an op that cannot run on the probe: not an activation we know
            return None
        y = env[out]
        if not isinstance(y, torch.Tensor) or y.shape != _PROBE.shape or y.dtype != torch.float64:
            return None
        return next((name for name, ref in _ACTS.items() if torch.allclose(y, ref, rtol=1e-9, atol=1e-9)), None)


def _match(mul: fx.Node, frozen: set[fx.Node]) -> tuple[str | None, tuple | None]:
    """(reason it does not fuse, None) or (None, (gate, up, act, chain))."""
    a, b = mul.args[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return "not a candidate", None
    for act_out, up in ((a, b), (b, a)):
        if up.target is not qlinear:
            continue
        found = _act_chain(act_out)
        if found is None or found[0].target is not qlinear or found[0] is up:
            continue
        gate, chain = found
        if len(up.users) != 1:
            return "the up projection's output has another reader", None
        inside = set(chain) | {mul}
        if any(u not in inside for n in (gate, *chain[:-1]) for u in n.users) or set(act_out.users) != {mul}:
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
        act = _which_act(gate, chain, act_out)
        if act is None:
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
