"""Helpers the rule families share.

Rules run as Inductor's ``joint_custom_post_pass`` on the inference graph *before* freezing.
There, weights are still placeholders; freezing then turns every non-mutated parameter/buffer
into a constant and constant-folds whatever the rules computed from weights only (a
concatenation, a transpose). So a rule builds weight expressions as graph nodes and the fold
happens during freezing, before Inductor's FX-graph-cache key: the folded constants are frozen
parameters, keyed by metadata and re-read from the live graph on a cache hit.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch._functorch._aot_autograd.schemas import MutationType
from torch._guards import TracingContext

from .. import report

aten = torch.ops.aten
prims = torch.ops.prims

# ops that only change how a weight is viewed: weight-ness flows through them
LAYOUT_OPS = (aten.permute.default, aten.t.default, aten.reshape.default, aten.view.default)


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
    """The node a weight expression is a view of (through permute / t / reshape / view)."""
    while node.op == "call_function" and node.target in LAYOUT_OPS:
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
    casts of one tensor are one activation too (a cast of a reshape, too: recursive)."""
    if x.op == "call_function" and x.target in (aten.reshape.default, aten.view.default):
        return ("reshape", activation_key(x.args[0]), tuple(x.args[1]))
    if x.op == "call_function" and x.target is prims.convert_element_type.default:
        return ("cast", activation_key(x.args[0]), x.args[1])
    return x
