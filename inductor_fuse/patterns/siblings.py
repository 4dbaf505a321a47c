"""Rule family ``siblings``: N >= 2 linears that read the same activation become one matmul.

    y_i = x @ W_i^T + b_i      (i = 1..N, W_i: [N_i, K], frozen)
 =>
    y   = x @ cat(W_1..W_N)^T + cat(b_1..b_N)      (one GEMM, weights concatenated once)
    y_i = y[:, off_i : off_i + N_i]                (views, no copy)

Covers QKV (GQA: unequal N_i), gate|up, the 4-way input projections of linear-attention layers.
Float linears reach this pass (after freezing) as ``aten.mm(x, Wt)`` / ``aten.addmm(b, x, Wt)``
with ``Wt`` a frozen constant; quantized linears as ``inductor_fuse.qlinear(x, planes, b, fmt)``
whose planes all have N as leading dim, so each plane concatenates along dim 0. Quantized
siblings fuse only when format and K match. The concatenation runs once, here, at compile time.
"""

from __future__ import annotations

import collections
from typing import NamedTuple

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from .. import report
from .graph_utils import add_constant, constant_of, erase_if_unused, module_name, real_tensors, set_fake_value

FAMILY = "siblings"
aten = torch.ops.aten


def _qlinear_op():
    try:
        return torch.ops.inductor_fuse.qlinear.default
    except (AttributeError, RuntimeError):
        return None


class _Linear(NamedTuple):
    node: fx.Node  # the mm / addmm / qlinear node
    x: fx.Node  # activation
    weights: tuple[fx.Node, ...]  # [Wt] for float, planes for quantized
    bias: fx.Node | None
    fmt: str | None  # None for float


def _as_linear(node: fx.Node, qlinear) -> _Linear | None:
    if node.op != "call_function":
        return None
    if node.target is aten.mm.default and len(node.args) == 2 and not node.kwargs:
        x, wt = node.args
        return _Linear(node, x, (wt,), None, None)
    if node.target is aten.addmm.default and len(node.args) == 3 and not node.kwargs:
        b, x, wt = node.args
        return _Linear(node, x, (wt,), b, None)
    if qlinear is not None and node.target is qlinear:
        x, planes, b, fmt = (list(node.args) + [None, None])[:4]
        return _Linear(node, x, tuple(planes), b, fmt)
    return None


_LAYOUT_OPS = (aten.permute.default, aten.t.default, aten.reshape.default, aten.view.default)


def _why_not_fusable(lin: _Linear) -> str | None:
    for w in lin.weights:
        if constant_of(w) is None:
            root = w
            while root.op == "call_function" and root.target in _LAYOUT_OPS:
                root = root.args[0]
            kind = f"a graph input ({root.name})" if root.op == "placeholder" else f"computed at run time ({root.target})"
            return f"weight {w.name} is {kind}, not a frozen constant"
    if lin.bias is not None:
        b = constant_of(lin.bias)
        if b is None:
            return f"bias {lin.bias.name} is not a frozen constant"
        if b.dim() != 1:
            return f"bias {lin.bias.name} has shape {tuple(b.shape)}, not [N]"
    return None


def _group_key(lin: _Linear) -> tuple:
    """Linears fuse only with the same activation and compatible weights."""
    w = constant_of(lin.weights[0])
    if lin.fmt is None:
        return ("float", w.dtype, w.device, w.shape[0])  # Wt: [K, N]
    return ("quant", lin.fmt, w.device, len(lin.weights), tuple(p.dtype for p in map(constant_of, lin.weights)))


def _activation_key(x: fx.Node):
    # Siblings of a 3-D input read x through reshape([-1, K]); CSE usually merges those, but
    # two identical reshapes of the same tensor are the same activation too.
    if x.op == "call_function" and x.target in (aten.reshape.default, aten.view.default):
        return ("reshape", x.args[0], tuple(x.args[1]))
    return x


def _out_features(lin: _Linear) -> int:
    w = constant_of(lin.weights[0])
    return w.shape[1] if lin.fmt is None else w.shape[0]


def _cat_weights(lins: list[_Linear]) -> list[torch.Tensor]:
    if lins[0].fmt is None:
        wts = [constant_of(l.weights[0]) for l in lins]  # each [K, N_i]
        if all(w.mT.is_contiguous() for w in wts):  # transposed view of a row-major [N_i, K]
            return [torch.cat([w.mT for w in wts], 0).mT]  # keep the column-major layout
        return [torch.cat(wts, 1)]
    planes = [[constant_of(p) for p in l.weights] for l in lins]
    return [torch.cat([pl[j] for pl in planes], 0).contiguous() for j in range(len(planes[0]))]


def _cat_bias(lins: list[_Linear], dtype: torch.dtype, device) -> torch.Tensor | None:
    if all(l.bias is None for l in lins):
        return None
    parts = []
    for l in lins:
        b = constant_of(l.bias) if l.bias is not None else None
        parts.append(b.to(dtype) if b is not None else torch.zeros(_out_features(l), dtype=dtype, device=device))
    return torch.cat(parts)


def _fuse(graph: fx.Graph, lins: list[_Linear]) -> str:
    """Replace ``lins`` (in graph order) by one fused linear + slices; return the detail line."""
    first = lins[0]
    x = first.x
    with real_tensors(), torch.no_grad():
        weights = _cat_weights(lins)
        w0 = constant_of(lins[0].weights[0])
        bias_dtype = w0.dtype if lins[0].fmt is None else constant_of(lins[0].bias).dtype if lins[0].bias is not None else None
        bias = _cat_bias(lins, bias_dtype or torch.float32, w0.device)
    w_nodes = [add_constant(graph, w, FAMILY) for w in weights]
    b_node = add_constant(graph, bias, FAMILY) if bias is not None else None
    sizes = [_out_features(l) for l in lins]

    with graph.inserting_before(first.node):
        if lins[0].fmt is None:
            if b_node is None:
                fused = graph.call_function(aten.mm.default, (x, w_nodes[0]))
            else:
                fused = graph.call_function(aten.addmm.default, (b_node, x, w_nodes[0]))
            out_dim = 1
        else:
            fused = graph.call_function(first.node.target, (x, w_nodes, b_node, lins[0].fmt))
            out_dim = x.meta["val"].dim() - 1 if "val" in x.meta else -1
        fused.meta.update({k: v for k, v in first.node.meta.items() if k != "val"})
        set_fake_value(fused)
        offset = 0
        for lin, n in zip(lins, sizes):
            piece = graph.call_function(aten.slice.Tensor, (fused, out_dim, offset, offset + n))
            piece.meta.update({k: v for k, v in lin.node.meta.items() if k != "val"})
            set_fake_value(piece)
            lin.node.replace_all_uses_with(piece)
            offset += n

    for lin in lins:
        graph.erase_node(lin.node)
        for dead in (*lin.weights, lin.bias):
            if dead is not None:
                erase_if_unused(dead)

    x_shape = list(x.meta["val"].shape) if "val" in x.meta else "?"
    kind = str(w0.dtype).replace("torch.", "") if lins[0].fmt is None else lins[0].fmt
    return f"x{x_shape} -> [{'+'.join(map(str, sizes))}] {kind}, bias={'yes' if bias is not None else 'no'}"



def fuse_sibling_linears(graph: fx.Graph) -> int:
    """Fuse every group of >= 2 compatible linears sharing an input. Returns the rewrite count."""
    rep = report.current()
    qlinear = _qlinear_op()
    order = {n: i for i, n in enumerate(graph.nodes)}

    by_input: dict[object, list[_Linear]] = collections.defaultdict(list)
    for node in graph.nodes:
        lin = _as_linear(node, qlinear)
        if lin is not None:
            by_input[_activation_key(lin.x)].append(lin)

    rewrites = 0
    for lins in by_input.values():
        if len(lins) < 2:
            lin = lins[0]
            rep.skipped.append(report.Skip(FAMILY, (lin.node.name,), f"no other linear reads its input {lin.x.name}"))
            continue
        fusable = []
        for lin in lins:
            why = _why_not_fusable(lin)
            if why is None:
                fusable.append(lin)
            else:
                rep.skipped.append(report.Skip(FAMILY, (lin.node.name,), why))
        groups: dict[tuple, list[_Linear]] = collections.defaultdict(list)
        for lin in fusable:
            groups[_group_key(lin)].append(lin)
        for key, group in groups.items():
            if len(group) < 2:
                if len(fusable) >= 2:
                    rep.skipped.append(
                        report.Skip(FAMILY, (group[0].node.name,), f"no sibling with the same weight kind {key[:2]}")
                    )
                continue
            group.sort(key=lambda l: order[l.node])
            names = tuple(l.node.name for l in group)
            label = "(" + ",".join(module_name(l.node) for l in group) + ")"
            detail = _fuse(graph, group)
            rep.rewrites.append(report.Rewrite(FAMILY, label, names, detail))
            rewrites += 1
    if rewrites:
        graph.lint()
    return rewrites


class SiblingLinearPass(CustomGraphPass):
    family = FAMILY

    def __call__(self, graph: fx.Graph) -> None:
        fuse_sibling_linears(graph)

    def uuid(self):
        from ..backend import plugin_hash

        return plugin_hash()
