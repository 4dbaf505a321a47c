"""Rule family ``siblings``: N >= 2 linears that read the same activation become one matmul.

    y_i = x @ W_i^T + b_i      (i = 1..N, W_i: [N_i, K] frozen)
 =>
    y   = x @ cat(W_1..W_N)^T + cat(b_1..b_N)      (one GEMM; the cat is folded at freezing)
    y_i = y[:, off_i : off_i + N_i]                (views, no copy)

Covers QKV (GQA: unequal N_i), gate|up, the 4-way input projections of linear-attention layers.
Linears as graph_utils.as_linear sees them (aten mm / addmm, inductor_fuse.qlinear); a quantized
linear's planes all have N as leading dim, so each
plane concatenates along dim 0 (same format and K required). Missing biases become zeros.
Runs before freezing (see graph_utils), which also keeps Inductor's own 2/3-way equal-shape
concat from taking the linears first.
"""

from __future__ import annotations

import collections

import torch
import torch.fx as fx
from torch._inductor.pattern_matcher import stable_topological_sort

from .. import report
from .graph_utils import (
    Linear,
    activation_key,
    as_linear,
    call,
    copy_meta,
    frozen_placeholders,
    is_frozen,
    module_name,
    not_frozen_reason,
    transposed_source,
    val,
    views_to_reshapes,
    weight_root,
)
from .registry import GRAPH_WALK, rule_family

FAMILY = "siblings"
aten = torch.ops.aten


def _why_not_fusable(lin: Linear, frozen: set[fx.Node]) -> str | None:
    for w in lin.weights:
        if not is_frozen(w, frozen):
            return not_frozen_reason("weight", w)
    if lin.bias is not None and not is_frozen(lin.bias, frozen):
        return not_frozen_reason("bias", lin.bias)
    return None


def _weight_key(lin: Linear) -> tuple:
    """Linears fuse only with compatible weights: float of one dtype and K, or one quant format."""
    w = val(lin.weights[0])
    if lin.fmt is None:
        return ("float", w.dtype, w.device, w.shape[0])
    return ("quant", lin.fmt, w.device, tuple(val(p).dtype for p in lin.weights))


def _fused_float_weight(graph: fx.Graph, lins: list[Linear]) -> fx.Node:
    wts = [l.weights[0] for l in lins]  # each [K, N_i]
    sources = [transposed_source(w) for w in wts]
    if all(w is not None for w in sources):  # W_i^T = permute(W_i): concatenate the [N_i, K] weights, keep the layout
        return call(graph, aten.permute.default, call(graph, aten.cat.default, sources, 0), [1, 0])
    return call(graph, aten.cat.default, wts, 1)


def _fused_bias(graph: fx.Graph, lins: list[Linear]) -> fx.Node | None:
    biases = [l.bias for l in lins]
    if all(b is None for b in biases):
        return None
    dtype = next(val(b).dtype for b in biases if b is not None)
    parts = [
        b
        if b is not None
        else call(graph, aten.new_zeros.default, weight_root(l.weights[0]), [l.out_features], dtype=dtype)
        for l, b in zip(lins, biases)
    ]
    return call(graph, aten.cat.default, parts, 0)


def _fuse(graph: fx.Graph, lins: list[Linear]) -> str:
    """Replace ``lins`` (in graph order) by one fused linear + slices; return the detail line."""
    # Read the linears again: an earlier group's rewrite may have replaced their input (a group
    # that reads another group's output now reads a slice of the fused one).
    lins = [as_linear(l.node) for l in lins]
    first = lins[0]
    with graph.inserting_before(first.node):
        bias = _fused_bias(graph, lins)
        if first.fmt is None:
            weight = _fused_float_weight(graph, lins)
            fused = (
                call(graph, aten.mm.default, first.x, weight)
                if bias is None
                else call(graph, aten.addmm.default, bias, first.x, weight)
            )
            out_dim = 1
        else:
            planes = [call(graph, aten.cat.default, [l.weights[j] for l in lins], 0) for j in range(len(first.weights))]
            fused = call(graph, first.node.target, first.x, planes, bias, first.fmt)
            out_dim = val(first.x).dim() - 1
        copy_meta(first.node, fused)
        offset = 0
        for lin in lins:
            n = lin.out_features
            piece = call(graph, aten.slice.Tensor, fused, out_dim, offset, offset + n)
            copy_meta(lin.node, piece)
            lin.node.replace_all_uses_with(piece)
            views_to_reshapes(piece)
            offset += n
    for lin in lins:
        graph.erase_node(lin.node)
    kind = str(val(first.weights[0]).dtype).removeprefix("torch.") if first.fmt is None else first.fmt
    sizes = "+".join(str(l.out_features) for l in lins)
    return f"x{list(val(first.x).shape)} -> [{sizes}] {kind}, bias={'yes' if bias is not None else 'no'}"


@rule_family(
    FAMILY,
    order=20,
    kind=GRAPH_WALK,  # any number of siblings: a variadic pattern the pattern matcher cannot express
    doc="N >= 2 linears (float or quantized) reading one activation become one matmul + split",
)
def fuse_sibling_linears(graph: fx.Graph) -> int:
    """Fuse every group of >= 2 compatible linears sharing an input. Returns the rewrite count."""
    rep = report.current()
    frozen = frozen_placeholders(graph)

    by_input: dict[object, list[Linear]] = collections.defaultdict(list)
    for node in graph.nodes:
        lin = as_linear(node)
        if lin is not None:
            by_input[activation_key(lin.x)].append(lin)

    rewrites = 0
    for lins in by_input.values():
        if len(lins) < 2:
            rep.skipped.append(
                report.Skip(FAMILY, (lins[0].node.name,), f"no other linear reads its input {lins[0].x.name}")
            )
            continue
        groups: dict[tuple, list[Linear]] = collections.defaultdict(list)
        for lin in lins:
            why = _why_not_fusable(lin, frozen)
            if why is None:
                groups[_weight_key(lin)].append(lin)
            else:
                rep.skipped.append(report.Skip(FAMILY, (lin.node.name,), why))
        for key, group in groups.items():
            if len(group) < 2:
                rep.skipped.append(
                    report.Skip(FAMILY, (group[0].node.name,), f"no sibling with the same weight kind {key[:2]}")
                )
                continue
            label = "(" + ",".join(module_name(l.node) for l in group) + ")"
            names = tuple(l.node.name for l in group)
            rep.rewrites.append(report.Rewrite(FAMILY, label, names, _fuse(graph, group)))
            rewrites += 1
    if rewrites:
        stable_topological_sort(graph)  # a fused weight may read nodes defined after the first sibling
    return rewrites
