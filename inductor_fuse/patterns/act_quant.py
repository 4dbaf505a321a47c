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

The producer fused: when the group's activation is (through reshapes / views that keep K) the
output of an RMSNorm (``match_rmsnorm``: the aten spellings of transformers' LlamaRMSNorm and
Gemma3RMSNorm and of models/transformer.py's RMSNorm, below), the norm and the quantization become
one op, for one consumer too (a Llama layer: the fused q|k|v, gate|up, and lm_head):

    h32 = h.float(); n = h32 * rsqrt(mean(h32^2, -1) + eps); x = (n * w).to(dtype)  (or the like)
    y1 = qlinear(x, P1, b1, "q4_k")
 =>
    x, xq, xd, xs32, xs16 = rmsnorm_quantize_act(h, w, eps, w_offset, cast_before_weight, False, 8)
    y1 = qlinear_q8(x, P1, b1, "q4_k", [xq, xd, xs32, xs16], False, 8)

every other reader of the norm's output reads the op's x (the report says "RMSNorm fused").
When h is itself a residual add (h = add(a, b), same shapes and dtype: a Llama layer's input after
the first), the add goes into the op too (the report says "RMSNorm fused, with the residual add before it"):

    s, x, xq, xd, xs32, xs16 = add_rmsnorm_quantize_act(a, b, w, eps, w_offset, cast_before_weight, False, 8)

s (= a + b, rounded to the dtype as aten's add) replaces h for every other reader (the residual
stream): without it the add is a launch of its own, since Inductor cannot fuse it into our op.
When b is itself an RMSNorm's output that only the add reads (Gemma 3's sandwich norms: the
residual stream plus the post-attention / post-MLP norm of the block's output), that norm goes in
too, as four trailing arguments (report: "with the residual add and its addend's RMSNorm"):

    s, x, xq, xd, xs32, xs16 = add_rmsnorm_quantize_act(a, o, w, ..., 8, w_post, eps_post, 1.0, False)

Without it, that norm is an Inductor reduction kernel of its own (two per Gemma layer).
Nothing is removed that a node outside the norm reads; a norm that does not match exactly is left
alone (the reason is in the report).

The producer a GLU: when the activation is a ``glu_qlinear_q8``'s output (the down projection's
input, once the GLU's own input was quantized above), the GLU becomes
``glu_qlinear_q8_quantize_act``, which also returns the int8 activation of its output ("the GLU's
output quantized with it"); with INDUCTOR_FUSE_GLU_QUANT=1 its matvec quantizes in its epilogue,
else it runs act_quant after the GLU (the same numbers, the launch of before).

Counter: one per ``quantize_act``, ``rmsnorm_quantize_act``, ``add_rmsnorm_quantize_act``,
``decode_attention_quantize_act`` or ``glu_qlinear_q8_quantize_act`` inserted (one per group; the
rewrite lists the consumers). Left alone, with the reason in the report: a linear whose format has
no Triton matvec (it never reads an int8 activation), one with more rows than its matvec takes
or with rows that w4a16_sync takes (static M; bf16 / fp16 x: kernels/dispatch.py), an activation
only one quantized linear of that layout reads and no RMSNorm, decode attention or GLU makes
(quantizing inside its own call is the same single launch).

On CPU the consumers' bodies are the pure-torch reference (xa unused) and ``dequant_cpu`` (order
90) turns them into float GEMMs, erases the unread ``quantize_act`` and turns an
``rmsnorm_quantize_act`` / ``add_rmsnorm_quantize_act`` whose int8 outputs nothing reads back
into the (add and) norm's aten ops, a ``glu_qlinear_q8_quantize_act`` the GLU and a
``quantize_act`` (then erased); so CPU results are those of the unfused graph.

A graph walk (``GRAPH_WALK``): any number of consumers per activation, a variadic pattern.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import operator

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import is_concrete_int, statically_known_true

from .. import (
    attention,  # noqa: F401 -- defines decode_attention (matched) and decode_attention_quantize_act (emitted)
    report,
)
from ..kernels.dispatch import kernel_for
from ..kernels.registry import KERNELS
from ..quant import op  # noqa: F401 -- defines the consumers (matched) and quantize_act, the q8 variants (emitted)
from ..quant.formats import FORMATS
from .graph_utils import activation_key, call, copy_meta, is_call, module_name, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "act_quant"
ops = torch.ops.inductor_fuse
aten = torch.ops.aten
prims = torch.ops.prims
# each consumer op -> its variant that takes the quantized activation as a last argument
Q8_VARIANT = {
    ops.qlinear.default: ops.qlinear_q8.default,
    ops.glu_qlinear.default: ops.glu_qlinear_q8.default,
}
quantize_act = ops.quantize_act.default
rmsnorm_quantize_act = ops.rmsnorm_quantize_act.default
add_rmsnorm_quantize_act = ops.add_rmsnorm_quantize_act.default
decode_attention_quantize_act = ops.decode_attention_quantize_act.default
glu_qlinear_q8_quantize_act = ops.glu_qlinear_q8_quantize_act.default


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
    if not all(isinstance(d, int) for d in rows):
        return None
    M, top = math.prod(rows), spec.matvec_max_m
    if kernel_for(fmt, M, val(planes[0]).shape[0], K, val(x).dtype) == "w4a16_sync":
        return f"M = {M} rows of {val(x).dtype}: {fmt}'s w4a16_sync runs, reading x in float"
    if M > top:
        return f"M = {M} rows: {fmt}'s GEMM runs (its matvec takes M <= {top}), reading x in float"
    return None


def _rewrite(graph: fx.Graph, group: list[fx.Node], interleave: bool) -> str:
    """One quantize_act before the first consumer, each consumer swapped for its q8 variant."""
    first = group[0]
    x = first.args[0]
    max_m = max(KERNELS[n.args[3]].matvec_max_m for n in group)
    with graph.inserting_before(first):
        qa = call(graph, quantize_act, x, interleave, max_m)
        parts = _outputs(graph, qa)
    copy_meta(first, qa)
    return _swap_consumers(graph, group, parts, interleave, max_m)


def _outputs(graph: fx.Graph, node: fx.Node) -> list[fx.Node]:
    """getitem nodes for each output of a multi-output op (their values recorded)."""
    parts = []
    for i, v in enumerate(val(node)):
        part = graph.call_function(operator.getitem, (node, i))
        part.meta["val"] = v
        parts.append(part)
    return parts


def _swap_consumers(graph: fx.Graph, group: list[fx.Node], xa: list, interleave: bool, max_m: int) -> str:
    """Each consumer becomes its q8 variant reading xa; returns the rewrite's description."""
    x = group[0].args[0]
    for node in group:
        with graph.inserting_before(node):
            new = call(graph, Q8_VARIANT[node.target], *node.args, xa, interleave, max_m)
        copy_meta(node, new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    fmts = ", ".join(n.args[3] for n in group)
    layout = "interleaved" if interleave else "natural order"
    return f"x{list(val(x).shape)} -> int8 per 32-tile ({layout}), M <= {max_m}; read by {len(group)}: {fmts}"


# -- the producer: an RMSNorm ----------------------------------------------------------------------
# What the post-grad aten graph of an RMSNorm over the last dim looks like (dtype: the model's;
# the casts are absent in a float32 model):
#   h32 = convert_element_type(h, float32)
#   r   = rsqrt(add(mean(pow(h32, 2), [-1], True), eps))       (or mul(h32, h32); add(eps, mean))
#   n   = mul(h32, r)                                            (either operand order)
# then the weight, one of:
#   y = mul(w, convert_element_type(n, dtype))                   LlamaRMSNorm: cast_before_weight
#   y = convert_element_type(mul(n, w32), dtype)                 models/transformer.py (w32 =
#       w32 = convert_element_type(w, float32) or w;              convert(w) or w), Gemma3RMSNorm
#       or add(that, 1.0)                                         (w32 = add(convert(w), 1.0))
# (float32: y = mul(n, w) or mul(n, add(w, 1.0)), the two orders the same arithmetic).


@dataclasses.dataclass
class RMSNorm:
    """An RMSNorm subgraph: y = out, computed from h and w; ``removed``: its nodes but h and w."""

    h: fx.Node
    w: fx.Node
    eps: float
    w_offset: float
    cast_before_weight: bool
    out: fx.Node
    removed: list[fx.Node]

    def describe(self) -> str:
        weight = "weight after the cast" if self.cast_before_weight else "weight in float32"
        offset = f", w + {self.w_offset:g}" if self.w_offset else ""
        return f"eps {self.eps:g}{offset}, {weight}"


def _same_shape(a, b) -> bool:
    """Shapes equal without a guard: a symbolic dimension only equals itself."""
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def _cast_of(node: object, dtype: torch.dtype) -> fx.Node | None:
    """The input of ``convert_element_type(input, dtype)``, else None."""
    if is_call(node, prims.convert_element_type.default) and node.args[1] == dtype and not node.kwargs:
        return node.args[0]
    return None


def _weight(node: object, K: int) -> tuple[fx.Node, float, list[fx.Node]] | None:
    """(w, offset, nodes) of a float32 weight expression: w | convert(w) | add(w or convert(w), c)."""
    offset, nodes = 0.0, []
    if is_call(node, aten.add.Tensor) and len(node.args) == 2 and not node.kwargs:
        a, b = node.args
        if isinstance(a, (int, float)):
            a, b = b, a
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not isinstance(a, fx.Node):
            return None
        offset, nodes, node = float(b), [node], a
    inner = _cast_of(node, torch.float32)
    if inner is not None:
        nodes, node = [*nodes, node], inner
    if not isinstance(node, fx.Node) or "val" not in node.meta:
        return None
    v = val(node)
    if not isinstance(v, torch.Tensor) or not _same_shape(v.shape, [K]) or v.dtype not in op.FLOAT_DTYPES:
        return None
    if inner is None and v.dtype != torch.float32:
        return None
    return node, offset, nodes


def _core(n: object) -> tuple[fx.Node, float, list[fx.Node]] | str | None:
    """n = mul(h32, rsqrt(add(mean(pow(h32, 2), [-1], True), eps))): (h32, eps, nodes); a reason
    when it looks like one (a mean under an rsqrt) and is not; None when it does not."""
    if not is_call(n, aten.mul.Tensor) or len(n.args) != 2 or n.kwargs:
        return None
    for h32, r in (n.args, n.args[::-1]):
        if not is_call(r, aten.rsqrt.default):
            continue
        a = r.args[0]
        if not is_call(a, aten.add.Tensor) or len(a.args) != 2 or a.kwargs:
            return "no add(mean, eps) under the rsqrt"
        mean, eps = a.args if isinstance(a.args[0], fx.Node) else a.args[::-1]
        if not isinstance(eps, (int, float)) or isinstance(eps, bool):
            return "eps is not a constant"
        if not is_call(mean, aten.mean.dim) or mean.kwargs.get("dtype") is not None:
            return "no mean under the rsqrt"
        sq, dims, keep = (*mean.args, False)[:3] if len(mean.args) < 3 else mean.args[:3]
        keep = mean.kwargs.get("keepdim", keep)
        ndim = val(sq).dim()
        if list(dims) not in ([-1], [ndim - 1]) or not keep:
            return f"the mean is over dims {list(dims)} (keepdim {keep}), not the last one"
        if is_call(sq, aten.pow.Tensor_Scalar):
            squares = sq.args[0] is h32 and sq.args[1] == 2
        else:
            squares = is_call(sq, aten.mul.Tensor) and sq.args[0] is h32 and sq.args[1] is h32
        if not squares or not isinstance(h32, fx.Node):
            return "the mean is not of the squares of what it normalizes"
        if val(h32).dtype != torch.float32:
            return f"computed in {val(h32).dtype}, not float32"
        return h32, float(eps), [sq, mean, a, r, n]
    return None


def match_rmsnorm(x: fx.Node, whole_tiles: bool = True) -> tuple[RMSNorm | None, str | None]:
    """The RMSNorm that makes x (through reshapes / views that keep the last dim), or (None, why):
    why is None when x's producer is no RMSNorm at all, a reason when it looks like one and is not
    one this op computes exactly. whole_tiles: K must be a multiple of ACT_TILE (the norms that
    quantize their output)."""
    K = val(x).shape[-1]
    K = int(K) if is_concrete_int(K) else K  # (a SymInt of a known value in a make_fx graph: its int)
    out = x
    while is_call(out, aten.reshape.default, aten.view.default):
        out = out.args[0]
        if not isinstance(out, fx.Node) or not statically_known_true(val(out).shape[-1] == K):
            return None, None
    if not isinstance(out, fx.Node) or out.op != "call_function":
        return None, None
    dtype = val(out).dtype
    cands = []  # (n, weight expression, cast_before_weight, nodes between n and out)
    inner = _cast_of(out, dtype) if dtype != torch.float32 else None
    if inner is not None and is_call(inner, aten.mul.Tensor) and val(inner).dtype == torch.float32:
        a, b = inner.args
        cands += [(a, b, False, [inner]), (b, a, False, [inner])]
    elif is_call(out, aten.mul.Tensor) and len(out.args) == 2 and not out.kwargs:
        for n, wx in (out.args, out.args[::-1]):
            if dtype == torch.float32:
                cands.append((n, wx, False, []))
            elif (core := _cast_of(n, dtype)) is not None:
                cands.append((core, wx, True, [n]))
    for n, wx, cast_first, between in cands:
        core = _core(n)
        if core is None:
            continue
        if isinstance(core, str):
            return None, core
        h32, eps, core_nodes = core
        h, nodes = h32, [*core_nodes, *between]
        if dtype != torch.float32:
            h = _cast_of(h32, torch.float32)
            if h is None or val(h).dtype != dtype:
                return None, f"normalizes a {val(h32).dtype} value that is no cast of a {dtype} one"
            nodes.insert(0, h32)
        if cast_first:
            if not isinstance(wx, fx.Node) or not _same_shape(val(wx).shape, [K]) or val(wx).dtype != dtype:
                return None, f"the weight is not a [{K}] {dtype} vector"
            w, offset, w_nodes = wx, 0.0, []
        else:
            weight = _weight(wx, K)
            if weight is None:
                return None, f"the weight is not a [{K}] vector (w, float(w) or float(w) + c)"
            w, offset, w_nodes = weight
        if not _same_shape(val(h).shape, val(out).shape) or val(out).dtype != val(h).dtype:
            return None, "the output's shape or dtype is not its input's"
        if not isinstance(K, int):
            return None, f"symbolic K = {K}"
        if whole_tiles and K % op.ACT_TILE:
            return None, f"K = {K} is not a multiple of {op.ACT_TILE}"
        removed = [*nodes, *w_nodes, out]
        inside = set(removed)
        for node in removed[:-1]:
            outside = [u.name for u in node.users if u not in inside]
            if outside:
                return None, f"{node.name} (inside the norm) is also read by {', '.join(outside)}"
        return RMSNorm(h, w, eps, offset, cast_first, out, removed), None
    return None, None


def _rows_like(graph: fx.Graph, part: fx.Node, x: fx.Node) -> fx.Node:
    """part [..., C] of the norm output's leading dims reshaped to x's leading dims."""
    if _same_shape(val(part).shape[:-1], val(x).shape[:-1]):
        return part
    lead = [d if isinstance(d, int) else call(graph, aten.sym_size.int, x, i) for i, d in enumerate(val(x).shape[:-1])]
    return call(graph, aten.reshape.default, part, [*lead, val(part).shape[-1]])


def _residual_add(graph: fx.Graph, norm: RMSNorm) -> fx.Node | None:
    """The add(a, b) that makes the norm's input (a residual add: same shapes and dtype, no
    alpha), when the fused op can take it (its weight defined before it), else None."""
    h = norm.h
    if not is_call(h, aten.add.Tensor) or len(h.args) != 2 or h.kwargs:
        return None
    if not all(isinstance(t, fx.Node) and "val" in t.meta for t in h.args):
        return None
    vh = val(h)
    if any(val(t).dtype != vh.dtype or not _same_shape(val(t).shape, vh.shape) for t in h.args):
        return None
    order = {n: i for i, n in enumerate(graph.nodes)}
    return h if order[norm.w] < order[h] else None


def _normed_addend(add: fx.Node) -> tuple[fx.Node, RMSNorm] | None:
    """(the other operand, the norm) when one operand of the residual add is an RMSNorm's output
    that only the add reads (Gemma 3's sandwich norms: x + post_norm(o)), else None."""
    for i in (1, 0):
        inner, _ = match_rmsnorm(add.args[i])
        if inner is not None and inner.out is add.args[i] and list(inner.out.users) == [add]:
            return add.args[1 - i], inner
    return None


def _rewrite_fused(graph: fx.Graph, norm: RMSNorm, group: list[fx.Node], interleave: bool) -> str:
    """The RMSNorm and the quantization as one rmsnorm_quantize_act (with the residual add before
    the norm, when there is one: add_rmsnorm_quantize_act, whose s replaces the add for every
    reader); its y replaces the norm's output for every reader, the consumers become q8 variants
    reading its int8 activation."""
    first = group[0]
    x = first.args[0]
    max_m = max(KERNELS[n.args[3]].matvec_max_m for n in group)
    out = norm.out
    args = (norm.w, norm.eps, norm.w_offset, norm.cast_before_weight, interleave, max_m)
    add = _residual_add(graph, norm)
    addend = _normed_addend(add) if add is not None else None
    with graph.inserting_before(add or out):
        if addend is not None:
            a, bn = addend
            b_norm = (bn.w, bn.eps, bn.w_offset, bn.cast_before_weight)
            fused = call(graph, add_rmsnorm_quantize_act, a, bn.h, *args, *b_norm)
        elif add is not None:
            fused = call(graph, add_rmsnorm_quantize_act, *add.args, *args)
        else:
            fused = call(graph, rmsnorm_quantize_act, norm.h, *args)
        parts = _outputs(graph, fused)
    copy_meta(out, fused)
    if add is not None:
        s, *parts = parts
        copy_meta(add, s)
        add.replace_all_uses_with(s)
    copy_meta(out, parts[0])
    out.replace_all_uses_with(parts[0])
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in sorted(norm.removed, key=order.__getitem__, reverse=True):  # readers first
        graph.erase_node(node)
    if add is not None:
        graph.erase_node(add)
    if addend is not None:
        for node in sorted(addend[1].removed, key=order.__getitem__, reverse=True):
            graph.erase_node(node)
    with graph.inserting_before(first):
        xa = [_rows_like(graph, p, x) for p in parts[1:]]
    if addend is not None:
        what = f"RMSNorm fused, with the residual add and its addend's RMSNorm ({addend[1].describe()}) before it,"
    elif add is not None:
        what = "RMSNorm fused, with the residual add before it,"
    else:
        what = "RMSNorm fused"
    return f"{what} ({norm.describe()}): " + _swap_consumers(graph, group, xa, interleave, max_m)


# -- the producer: decode attention ----------------------------------------------------------------
# The o-projection of a decode step reads the attention output through a transpose and a view:
#   a = decode_attention(q, k, v, mask, scale, softcap)        [B, Hq, S, D]   (the decode_attention rule's)
#   x = view(permute(a, [0, 2, 1, 3]), [B, S, Hq * D])            (or transpose(a, 1, 2); reshape)
#   y = qlinear(x, P, b, fmt)
# =>
#   a, xq, xd, xs32, xs16 = decode_attention_quantize_act(q, k, v, mask, scale, softcap, interleave, max_m)
#   y = qlinear_q8(x, P, b, fmt, [xq, xd, xs32, xs16], interleave, max_m)
# The kernel quantizes in the step that merges its splits: one launch fewer per layer.


def match_attention(x: fx.Node) -> fx.Node | None:
    """The decode_attention node whose output x is, as its o-projection reads it, else None."""
    if not is_call(x, aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return None
    t = x.args[0]
    if is_call(t, aten.clone.default):  # .contiguous() of the transpose
        t = t.args[0]
    if is_call(t, aten.permute.default) and list(t.args[1]) in ([0, 2, 1, 3], [0, 2, 1, -1]):
        a = t.args[0]
    elif is_call(t, aten.transpose.int) and sorted(int(d) % 4 for d in t.args[1:3]) == [1, 2]:
        a = t.args[0]
    else:
        return None
    if not is_call(a, ops.decode_attention.default) or a.kwargs:
        return None
    B, Hq, S, D = val(a).shape
    lead, K = val(x).shape[:-1], val(x).shape[-1]
    if not all(isinstance(d, int) for d in (B, Hq, S, D, K, *lead)) or K != Hq * D or math.prod(lead) != B * S:
        return None
    if len(lead) > 1 and list(lead) != [B, S]:
        return None
    return a if K % op.ACT_TILE == 0 else None


def _rewrite_producer(graph: fx.Graph, producer: fx.Node, target, group: list[fx.Node], interleave: bool) -> str:
    """producer -> target(*producer.args, interleave, max_m), its quantizing variant: its first
    output replaces the producer's for every reader, the consumers become q8 variants reading the
    int8 activation (the other four outputs, shaped as the consumers' x)."""
    first = group[0]
    x = first.args[0]
    max_m = max(KERNELS[n.args[3]].matvec_max_m for n in group)
    with graph.inserting_before(producer):
        fused = call(graph, target, *producer.args, interleave, max_m)
        parts = _outputs(graph, fused)
    copy_meta(producer, fused)
    copy_meta(producer, parts[0])
    producer.replace_all_uses_with(parts[0])
    graph.erase_node(producer)
    with graph.inserting_before(first):
        xa = [_rows_like(graph, p, x) for p in parts[1:]]
    return _swap_consumers(graph, group, xa, interleave, max_m)


# -- the producer: a GLU ----------------------------------------------------------------------------
# The down projection reads the GLU's output (gate|up after the rewrite above: glu_qlinear_q8):
#   y = glu_qlinear_q8(x, P, b, fmt, act, xa, interleave, max_m)         [..., I], I % 32 == 0
#   z = qlinear(y, Pd, bd, fmt_d)
# =>
#   y, yq, yd, ys32, ys16 = glu_qlinear_q8_quantize_act(x, P, b, fmt, act, xa, interleave, max_m, il_d, max_m_d)
#   z = qlinear_q8(y, Pd, bd, fmt_d, [yq, yd, ys32, ys16], il_d, max_m_d)
# With INDUCTOR_FUSE_GLU_QUANT=1 the GLU matvec quantizes its own output (one launch fewer per
# layer); else the op runs the GLU, then act_quant: the graph is the same either way.


def match_glu(x: fx.Node) -> fx.Node | None:
    """The glu_qlinear_q8 node whose output x is (its every 32-tile whole), else None."""
    if not is_call(x, ops.glu_qlinear_q8.default) or x.kwargs:
        return None
    I = val(x).shape[-1]
    return x if isinstance(I, int) and I % op.ACT_TILE == 0 else None


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
        label = "(" + ",".join(module_name(n) for n in group) + ")"
        names = tuple(n.name for n in group)
        activation = group[0].args[0]
        norm, why_norm = match_rmsnorm(activation)
        detail = None
        if norm is not None:
            detail = _rewrite_fused(graph, norm, group, interleave)
        elif why_norm is None and (attn := match_attention(activation)) is not None:
            what = "decode attention's output quantized in its merge step: "
            detail = what + _rewrite_producer(graph, attn, decode_attention_quantize_act, group, interleave)
        elif why_norm is None and (glu := match_glu(activation)) is not None:
            what = "the GLU's output quantized with it: "
            detail = what + _rewrite_producer(graph, glu, glu_qlinear_q8_quantize_act, group, interleave)
        if detail is not None:  # a producer quantizes: one launch fewer
            rep.rewrites.append(report.Rewrite(FAMILY, label, names, detail))
            rewrites += 1
            continue
        if len(group) < 2:
            (node,) = group
            x = node.args[0].name
            why = f"the only quantized linear reading {x} in its layout: its own act_quant is the same one launch"
            if why_norm is not None:
                why += f"; RMSNorm not fused: {why_norm}"
            rep.skipped.append(report.Skip(FAMILY, (node.name,), why))
            continue
        if why_norm is not None:
            rep.skipped.append(report.Skip(FAMILY, names, f"RMSNorm not fused ({why_norm}): quantize_act of its own"))
        rep.rewrites.append(report.Rewrite(FAMILY, label, names, _rewrite(graph, group, interleave)))
        rewrites += 1
    return rewrites
