"""Rule family ``act_quant``: the int8 quantization of an activation (W4A8: per row, per 32-wide K
tile, one float32 scale) is computed once and shared by every quantized linear that reads it.

    y1 = qlinear(x, P1, b1, "q4_k")                   (each CUDA call quantizes x itself:
    y2 = qlinear(x, P2, b2, "q6_k")                    one act_quant launch per linear)
    y3 = glu_qlinear(x, P3, b3, "q4_k", "silu")
 =>
    xq, xd, xs32, xs16 = quantize_act(x, interleave=False, max_m=16)
    y1 = qlinear_q8(x, P1, b1, "q4_k", [xq, xd, xs32, xs16], False, 16)        (the matvec alone)
    y2 = qlinear_q8(x, P2, b2, "q6_k", [xq, xd, xs32, xs16], False, 16)
    y3 = glu_qlinear_q8(x, P3, b3, "q4_k", "silu", [xq, xd, xs32, xs16], False, 16)

Runs after ``glu`` and ``siblings`` (order 50 > 10, 20): it sees what they leave, e.g. a fused q|k
in Q4_K and v in Q6_K (llama.cpp's Q4_K_M) reading one normed activation. Consumers are grouped by
activation (``graph_utils.activation_key``) and by the layout their format's matvec reads
(``KernelSpec.interleave``: the int4_g* matvec reads x interleaved, the GGUF formats do not); a
group of two or more gets one ``quantize_act``. ``max_m`` is the largest ``matvec_max_m`` of the
group's formats: with more rows than that every consumer runs its GEMM on x, and the CUDA
quantize_act computes nothing (kernels/ops.py). The consumers keep x for those GEMM paths.

Counter: one per ``quantize_act`` inserted (one per group; the rewrite lists the consumers). Left
alone, with the reason in the report: a linear whose format has no Triton matvec (it never reads an
int8 activation), one with more rows than its matvec takes (static M), an activation only one
quantized linear of that layout reads (quantizing inside its own call is the same single launch).

On CPU the consumers' bodies are the pure-torch reference (xa unused) and ``dequant_cpu`` (order
90) turns them into float GEMMs and erases the unread ``quantize_act``; so CPU results are those of
the unfused graph.

A graph walk (``GRAPH_WALK``): any number of consumers per activation, a variadic pattern.
"""

from __future__ import annotations

import collections
import math
import operator

import torch
import torch.fx as fx

from .. import report
from ..kernels.registry import KERNELS
from ..quant import op  # noqa: F401 -- defines the consumers (matched) and quantize_act, the q8 variants (emitted)
from ..quant.formats import FORMATS
from .graph_utils import activation_key, call, copy_meta, module_name, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "act_quant"
ops = torch.ops.inductor_fuse
# each consumer op -> its variant that takes the quantized activation as a last argument
Q8_VARIANT = {
    ops.qlinear.default: ops.qlinear_q8.default,
    ops.glu_qlinear.default: ops.glu_qlinear_q8.default,
}
quantize_act = ops.quantize_act.default


def _why_not(node: fx.Node) -> str | None:
    """Why this quantized linear never reads an int8 activation, or None."""
    if node.kwargs:
        return "called with keyword arguments"
    x, planes, _, fmt = node.args[:4]
    spec = KERNELS.get(fmt)
    if spec is None:
        return f"format {fmt} has no int8 x int4 matvec (no Triton kernels): it never reads an int8 activation"
    K = FORMATS[fmt].check_planes([val(p) for p in planes])[2]  # from the weight: static
    if K % op.ACT_TILE:
        return f"K = {K} is not a multiple of {op.ACT_TILE}"
    rows = val(x).shape[:-1]
    if all(isinstance(d, int) for d in rows) and math.prod(rows) > spec.matvec_max_m:
        M, top = math.prod(rows), spec.matvec_max_m
        return f"M = {M} rows: {fmt}'s GEMM runs (its matvec takes M <= {top}), reading x in float"
    return None


def _rewrite(graph: fx.Graph, group: list[fx.Node], interleave: bool) -> str:
    """One quantize_act before the first consumer, each consumer swapped for its q8 variant."""
    first = group[0]
    x = first.args[0]
    max_m = max(KERNELS[n.args[3]].matvec_max_m for n in group)
    with graph.inserting_before(first):
        qa = call(graph, quantize_act, x, interleave, max_m)
        parts = []
        for i in range(4):
            part = graph.call_function(operator.getitem, (qa, i))
            part.meta["val"] = val(qa)[i]
            parts.append(part)
    copy_meta(first, qa)
    for node in group:
        with graph.inserting_before(node):
            new = call(graph, Q8_VARIANT[node.target], *node.args, parts, interleave, max_m)
        copy_meta(node, new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    fmts = ", ".join(n.args[3] for n in group)
    layout = "interleaved" if interleave else "natural order"
    return f"x{list(val(x).shape)} -> int8 per 32-tile ({layout}), M <= {max_m}; read by {len(group)}: {fmts}"


@rule_family(
    FAMILY,
    order=50,
    kind=GRAPH_WALK,  # any number of consumers of one activation: a variadic pattern
    doc="the int8 quantization of an activation (per row, per 32-wide K tile) runs once for all its quantized linears",
)
def share_act_quant(graph: fx.Graph) -> int:
    rep = report.current()
    groups: dict[tuple, list[fx.Node]] = collections.defaultdict(list)
    for node in graph.nodes:  # graph order: a group's first consumer comes first
        if node.op != "call_function" or node.target not in Q8_VARIANT:
            continue
        why = _why_not(node)
        if why is not None:
            rep.skipped.append(report.Skip(FAMILY, (node.name,), why))
            continue
        interleave = KERNELS[node.args[3]].interleave
        groups[(activation_key(node.args[0]), interleave)].append(node)

    rewrites = 0
    for (_, interleave), group in groups.items():
        if len(group) < 2:
            (node,) = group
            x = node.args[0].name
            why = f"the only quantized linear reading {x} in its layout: its own act_quant is the same one launch"
            rep.skipped.append(report.Skip(FAMILY, (node.name,), why))
            continue
        label = "(" + ",".join(module_name(n) for n in group) + ")"
        names = tuple(n.name for n in group)
        rep.rewrites.append(report.Rewrite(FAMILY, label, names, _rewrite(graph, group, interleave)))
        rewrites += 1
    return rewrites
