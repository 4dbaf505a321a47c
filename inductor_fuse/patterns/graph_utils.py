"""Helpers the rule families share.

Rules run as Inductor's ``joint_custom_post_pass`` on the inference graph *before* freezing.
There, weights are still placeholders; freezing then turns every non-mutated parameter/buffer
into a constant and constant-folds whatever the rules computed from weights only (a
concatenation, a transpose). So a rule builds weight expressions as graph nodes and the fold
happens during freezing, before Inductor's FX-graph-cache key: the folded constants are frozen
parameters, keyed by metadata and re-read from the live graph on a cache hit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch._functorch._aot_autograd.schemas import MutationType
from torch._guards import TracingContext
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .. import report
from ..quant import op as _quant_op  # noqa: F401 -- defines torch.ops.inductor_fuse.qlinear, matched below

aten = torch.ops.aten
prims = torch.ops.prims
qlinear = torch.ops.inductor_fuse.qlinear.default

# ops that only change how a weight is viewed: weight-ness flows through them
LAYOUT_OPS = (aten.permute.default, aten.t.default, aten.reshape.default, aten.view.default)
# casts of a weight (autocast casts every float32 weight to its dtype before the matmul): a cast of
# a frozen constant is one too once freezing has folded it
CAST_OPS = (prims.convert_element_type.default, aten._to_copy.default)


class Linear(NamedTuple):
    """A linear as the rules see it. Float linears appear as ``aten.mm(x, W^T)`` /
    ``aten.addmm(b, x, W^T)`` (x 2-D), quantized ones as ``inductor_fuse.qlinear(x, planes, b, fmt)``."""

    node: fx.Node  # the mm / addmm / qlinear node
    x: fx.Node  # activation
    weights: tuple[fx.Node, ...]  # (W^T,) for float ([K, N]), the planes for quantized
    bias: fx.Node | None
    fmt: str | None  # None for float

    @property
    def out_features(self) -> int:
        return val(self.weights[0]).shape[1 if self.fmt is None else 0]


def as_linear(node: fx.Node) -> Linear | None:
    """The Linear a node is (an mm, an addmm of a 1-D bias, a qlinear), or None."""
    if node.op != "call_function":
        return None
    if node.target is aten.mm.default and len(node.args) == 2 and not node.kwargs:
        x, wt = node.args
        return Linear(node, x, (wt,), None, None)
    if node.target is aten.addmm.default and len(node.args) == 3 and not node.kwargs:
        b, x, wt = node.args
        if val(b).dim() == 1:
            return Linear(node, x, (wt,), b, None)
    if node.target is qlinear:
        x, planes, b, fmt = node.args
        return Linear(node, x, tuple(planes), b, fmt)
    return None


def transposed_source(wt: fx.Node) -> fx.Node | None:
    """W when a float linear's W^T operand is permute(W, [1, 0]) (how nn.Linear traces), else None."""
    if wt.op == "call_function" and wt.target is aten.permute.default and list(wt.args[1]) == [1, 0]:
        return wt.args[0]
    return None


def frozen_placeholders(graph: fx.Graph) -> set[fx.Node]:
    """Placeholders that freezing will turn into constants (parameters and buffers that the
    graph does not mutate). Empty when the graph is not being frozen."""
    tc = TracingContext.try_get()
    params = getattr(tc, "params_flat_unwrap_subclasses", None) or getattr(tc, "params_flat", None)
    meta = getattr(tc, "fw_metadata", None)
    if not params or meta is None:
        return set()
    mutated = {
        i
        for i, info in enumerate(meta.input_info)
        if info.mutation_type in (MutationType.MUTATED_IN_GRAPH, MutationType.MUTATED_OUT_GRAPH)
    }
    aliased = {out.base_idx for out in meta.output_info if out.base_idx is not None}
    placeholders = graph.find_nodes(op="placeholder")
    return {placeholders[i] for i in range(min(len(params), len(placeholders))) if i not in mutated | aliased}


# ops whose output is a view of their first argument: a strided view may reach ``view`` through them
_VIEW_CHAIN_OPS = (
    aten.permute.default,
    aten.t.default,
    aten.transpose.int,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.expand.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.alias.default,
    aten.reshape.default,
)
_STRICT_VIEWS = (aten.view.default, aten._unsafe_view.default)


def views_to_reshapes(node: fx.Node) -> int:
    """A rewrite that hands consumers a slice of a wider tensor changes their strides: an
    ``aten.view`` traced on the contiguous original can fail on the slice ("Cannot view a tensor
    with shape ... and strides ..."). Turn every ``view`` reached from ``node`` through view ops
    into ``reshape``, which is the same view where one exists and a copy where not. Returns the
    number of nodes changed."""
    changed, stack, seen = 0, [node], set()
    while stack:
        n = stack.pop()
        for user in n.users:
            if user in seen or user.op != "call_function" or user.args[0] is not n:
                continue
            seen.add(user)
            if user.target in _STRICT_VIEWS:
                user.target = aten.reshape.default
                changed += 1
                stack.append(user)
            elif user.target in _VIEW_CHAIN_OPS:
                stack.append(user)
    return changed


def weight_root(node: fx.Node) -> fx.Node:
    """The node a weight expression is a view or a cast of (through permute / t / reshape / view,
    dtype conversions)."""
    while node.op == "call_function" and node.target in LAYOUT_OPS + CAST_OPS:
        node = node.args[0]
    return node


def is_frozen(node: object, frozen: set[fx.Node]) -> bool:
    if not isinstance(node, fx.Node):
        return False
    root = weight_root(node)
    return root in frozen or root.op == "get_attr"


def folds_to_constant(node: fx.Node, frozen: set[fx.Node]) -> bool:
    """node is computed from frozen constants only (e.g. a cat of frozen planes, as `siblings`
    makes): freezing folds it into a constant."""
    seen: dict[fx.Node, bool] = {}

    def walk(n: fx.Node) -> bool:
        if n not in seen:
            if n.op == "call_function":
                seen[n] = all(walk(i) for i in n.all_input_nodes)
            else:
                seen[n] = is_frozen(n, frozen)
        return seen[n]

    return walk(node)


def not_frozen_reason(what: str, node: fx.Node) -> str:
    root = weight_root(node)
    kind = f"a graph input ({root.name})" if root.op == "placeholder" else f"computed at run time ({root.target})"
    return f"{what} {node.name} is {kind}, not a frozen constant"


def first_not_frozen(nodes, frozen: set[fx.Node], what: str = "weight") -> str | None:
    """The reason the first of ``nodes`` (None entries skipped) is not a frozen constant, or None."""
    for n in nodes:
        if n is not None and not is_frozen(n, frozen):
            return not_frozen_reason(what, n)
    return None


def call(graph: fx.Graph, target, *args, **kwargs) -> fx.Node:
    """Insert ``target(*args)`` at the graph's insertion point and fill ``meta['val']``."""
    node = graph.call_function(target, args, kwargs)
    fake_args, fake_kwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
    fake_mode = next(
        (n.meta["val"].fake_mode for n in node.all_input_nodes if hasattr(n.meta.get("val"), "fake_mode")), None
    )
    if fake_mode is not None:
        with fake_mode:
            node.meta["val"] = target(*fake_args, **fake_kwargs)
    return node


def copy_meta(src: fx.Node, dst: fx.Node) -> None:
    """Give a replacement node the provenance of the node it replaces (module stack, source lines),
    not its value or the eager inputs of its op (``eager_input_vals``: another schema's)."""
    dst.meta.update({k: v for k, v in src.meta.items() if k not in ("val", "tensor_meta", "eager_input_vals")})


def is_call(node: object, *targets) -> bool:
    """node is a call_function node of one of targets."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def val(node: fx.Node):
    return node.meta["val"]


def record_rewrite(family: str, node: fx.Node, detail: str) -> None:
    """Report a rewrite of one node, labelled with the module it came from."""
    report.current().rewrites.append(report.Rewrite(family, module_name(node), (node.name,), detail))


def module_name(node: fx.Node) -> str:
    """Short name of the nn.Module a node came from, e.g. ``q_proj`` (``?`` if unknown)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]  # e.g. "L['self'].layers[0].attn.q_proj"
    tail = path.rsplit(".", 1)[-1]
    return tail.split("[")[0] or path


def activation_key(x: fx.Node):
    """What makes two linears' inputs one activation (a key to compare, or the node itself).

    Linears of a 3-D input read x through reshape(x, [-1, K]), those of a cast model through
    convert_element_type(x, dtype); CSE usually merges such twins, but two identical reshapes or
    casts of one tensor are one activation too (a cast of a reshape, too: recursive). So are two
    equal zero-paddings of one tensor: on CUDA, Inductor's ``pad_mm`` pass (it runs before our
    rules) gives every matmul whose sizes it aligns its own ``constant_pad_nd`` of x."""
    if x.op == "call_function" and x.target is aten.constant_pad_nd.default:
        value = x.args[2] if len(x.args) > 2 else x.kwargs.get("value", 0)
        return ("pad", activation_key(x.args[0]), tuple(x.args[1]), value)
    if x.op == "call_function" and x.target in (aten.reshape.default, aten.view.default):
        return ("reshape", activation_key(x.args[0]), tuple(x.args[1]))
    if x.op == "call_function" and x.target is prims.convert_element_type.default:
        return ("cast", activation_key(x.args[0]), x.args[1])
    return x


# ---------------------------------------------------------------------------------------------
# Activations, recognised by what they compute, not by how they are spelled: the pointwise nodes
# between a node and its activation (``F.silu``, ``x * sigmoid(x)``, its ``x / (1 + exp(-x))``
# decomposition, ``F.gelu(approximate="tanh")`` and its decomposition, float32 round trips of a
# bf16 value, ...) are evaluated in float64 on a probe of 257 points in [-8, 8] and 64 of each sign
# spaced geometrically from 8 to 1e30 (dtype casts taken as exact) and must equal one of ACTIVATIONS
# to 1e-9 (GELU with erf, 4.7e-4 away, is not GELU-tanh). The far points see a clamp: with the probe
# in [-8, 8] alone, `silu(g.clamp(-10, 10))` was taken for SiLU and fused without its clamp.
# `glu` walks up from the product's operand (pointwise_chain, reads_stay_inside,
# activation_of), `conv1d` down from the convolution's output (activation_after).
# ---------------------------------------------------------------------------------------------

MAX_ACT_NODES = 32  # pointwise nodes of one activation, at most
_FAR = torch.logspace(math.log10(8.0), 30.0, 65, dtype=torch.float64)[1:]
_PROBE = torch.cat([-_FAR.flip(0), torch.linspace(-8.0, 8.0, 257, dtype=torch.float64), _FAR])
ACTIVATIONS = {"silu": F.silu(_PROBE), "gelu_tanh": F.gelu(_PROBE, approximate="tanh")}


def is_pointwise(node: fx.Node) -> bool:
    t = node.target
    return node.op == "call_function" and (
        t is prims.convert_element_type.default
        or (isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags)
    )


def pointwise_chain(out: fx.Node, stop: fx.Node | None = None) -> tuple[fx.Node, list[fx.Node]] | None:
    """(root, chain): the one non-pointwise node (or `stop`) `out` is a pointwise function of, and the
    pointwise nodes in between, each after the nodes it reads (out last when it is pointwise; chain
    empty when out is the root); None when out reads more than one such node or the chain has more
    than MAX_ACT_NODES nodes."""
    chain, seen, root = [], set(), None
    stack = [(out, False)]
    while stack:  # depth first from out to its inputs; a node joins the chain after its inputs
        n, inputs_done = stack.pop()
        if inputs_done:
            chain.append(n)
            continue
        if n in seen or n is root:
            continue
        if n is stop or not is_pointwise(n) or not n.all_input_nodes:
            if root is not None:
                return None
            root = n
            continue
        seen.add(n)
        if len(seen) > MAX_ACT_NODES:
            return None
        stack.append((n, True))
        stack.extend((i, False) for i in reversed(n.all_input_nodes))
    return (root, chain) if root is not None else None


def reads_stay_inside(root: fx.Node, chain: list[fx.Node], out: fx.Node) -> bool:
    """Every reader of root and of the chain's nodes, out's aside, is a node of the chain: nothing
    but out is read from outside (pointwise_chain's root and chain of out)."""
    inside = set(chain)
    return all(n is out or set(n.users) <= inside for n in (root, *chain))


def activation_of(root: fx.Node, chain: list[fx.Node], out: fx.Node) -> str | None:
    """The name in ACTIVATIONS of what the chain computes of root at out (evaluated on the probe),
    or None (pointwise_chain's root and chain of out)."""
    with unset_fake_temporarily():  # the passes run under the compile's fake mode: real tensors here
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
        return next((name for name, ref in ACTIVATIONS.items() if torch.allclose(y, ref, rtol=1e-9, atol=1e-9)), None)


def activation_after(y: fx.Node) -> tuple[str, fx.Node, list[fx.Node]] | None:
    """(name, out, chain) when every reader of y is part of one activation of y (ACTIVATIONS) that
    out computes in y's dtype: chain is the pointwise nodes from y to out (out last; to
    erase once out is replaced: in reverse), none of them read from outside the chain but out.
    The shortest such chain (e.g. ``silu(y)``, not a cast of it after; through a float32 round
    trip of a bf16 y, the cast back); else None."""
    found, frontier, seen = [], [u for u in y.users if is_pointwise(u)], set()
    while frontier and len(seen) < MAX_ACT_NODES:  # the pointwise nodes computed from y alone
        n = frontier.pop()
        if n in seen:
            continue
        seen.add(n)
        pc = pointwise_chain(n, stop=y)
        if pc is None or pc[0] is not y:
            continue
        if reads_stay_inside(y, pc[1], n):
            found.append(pc[1])
        frontier.extend(u for u in n.users if is_pointwise(u))
    for chain in sorted(found, key=len):  # nested: each closed chain holds the shorter ones
        out = chain[-1]  # its shape is y's: pointwise of y and scalars only
        if val(out).dtype == val(y).dtype:
            name = activation_of(y, chain, out)
            if name is not None:
                return name, out, chain
    return None
