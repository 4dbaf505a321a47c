"""Rule family ``dequant_cpu``: on CPU, a quantized linear over frozen weights becomes a float
linear over the weight dequantized once, at compile time.

    y = qlinear(x, planes, b, fmt)                       (CPU: dequantizes every weight on every call)
                                                         (glu_qlinear: then act(gate) * up, as aten ops)
                                                         (qlinear_q8 / glu_qlinear_q8 likewise, on x)
 =>
    y = x @ dequantize(planes, fmt, x.dtype)^T + b      (dequantize folded into a constant by freezing)
    y = sliced_linear(x, dequantize(planes, fmt, x.dtype), C)
                                                         (float32, no bias, static M <= MAX_M, a weight
                                                         of SPLIT_BYTES or more: one bmm over C slices
                                                         of its rows, on every thread; equal up to float32 rounding)
    y = sum((scale * q - offset) * x)                   (float32 x of one row (static), a format with
                                                         int8 codes (WeightFormat.codes): one Inductor
                                                         C++ reduction over the codes, 1 byte a weight)

The CPU body of ``qlinear`` is the pure-torch reference: it dequantizes the whole weight on every
call, which made a CPU decode step of Gemma-3-270M take ~0.6 s. Freezing folds
``inductor_fuse.dequantize`` of frozen planes into a constant, so the compiled graph holds the
float weight and Inductor's CPU GEMM runs. The cost is memory: the float weights (4 bytes a weight
in float32, against ~0.56 for Q4_K). The rule dequantizes only while the float weights of the
graph fit in a quarter of the machine's available memory; past that the report says so and the
reference runs. Runs after ``siblings`` (a fused gate|up is dequantized as one weight) and after
``act_quant``: its consumers (``qlinear_q8``, ``glu_qlinear_q8``) are rewritten like the plain ops,
on x; one this rule leaves on CPU goes back to the plain op (its CPU body never reads the int8
activation); a ``quantize_act`` nothing reads any more is erased, an ``rmsnorm_quantize_act``
whose int8 outputs nothing reads becomes the RMSNorm's aten ops again, a
``decode_attention_quantize_act`` the ``decode_attention`` it was. So on CPU the graph
computes what it computed without ``act_quant``. A ``rope_cache_write`` on CPU (the ``rope_cache``
rule's) becomes the aten ops it computes, for Inductor's C++ kernels.

Times one row of x (decode), a weight does not become a float constant: a matvec is bound by the bytes it
reads, so freezing folds the weight's int8 codes and float32 scales (``weight_codes``; Q8_0's
codes are its plane) and the graph computes ``sum((scale * q - offset) * x)`` over them, which
Inductor fuses into one C++ reduction (``realize``, an identity that freezing does not fold and
that is lowered to a buffer, keeps the codes int8 and x computed once). Gemma-3-270M's tied
output head ([262144, 640], Q8_0) takes 8-10 ms a token that way on 2 cores, against about 60 ms
as a GEMV over its 671 MB float32 weight (2-core AMD EPYC); a whole decode step 28 ms against 72.
The weights ``scale * q - offset`` are the dequantized ones, bit for bit; the sum's order is the
reduction's.

A graph walk: one op, one node at a time, plus the memory budget over the whole graph.
"""

from __future__ import annotations

import math
import operator
import os

import torch
import torch.fx as fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized
from torch._inductor.constant_folding import add_dont_constant_fold
from torch._inductor.lowering import register_lowering

from .. import report, rope_cache  # noqa: F401 -- rope_cache: defines the op that _unfuse_rope_cache undoes
from ..quant import op  # noqa: F401 -- defines the qlinear and dequantize ops
from ..quant.formats import FORMATS
from ..sliced_linear import sliced_linear  # noqa: F401 -- defines the op
from .graph_utils import call, copy_meta, folds_to_constant, frozen_placeholders, not_frozen_reason, record_rewrite, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "dequant_cpu"
MEMORY_FRACTION = 0.25  # of the available memory, for the dequantized weights of one graph
# sliced_linear (MKL runs a product with a few rows of x on one thread; its batched mm, on all): a
# Gemma-3-270M decode step on 2 cores took 75 ms with one mm per linear, 61 ms with the output head
# sliced, 48 ms with every linear from 1 MiB (all but v_proj; slicing v_proj too: no change)
SPLIT_BYTES = 1 << 20  # float weights from this size ...
MAX_M = 4  # ... times at most this many rows of x (from 8 rows on, MKL threads the mm itself)
MAX_SLICES = 8  # the most slices (Gemma-3's head on 2 cores: 4 or 8 slices 23 ms, 2 slices 26, one mm 44)
ROW_ALIGN = 64  # rows per slice: a multiple of this (closest to one mm's summation; sliced_linear.py)
aten = torch.ops.aten
prims = torch.ops.prims
qlinear = torch.ops.inductor_fuse.qlinear.default
glu_qlinear = torch.ops.inductor_fuse.glu_qlinear.default
# act_quant's consumers (a last argument: the quantized activation) -> the plain ops
_PLAIN = {
    torch.ops.inductor_fuse.qlinear_q8.default: qlinear,
    torch.ops.inductor_fuse.glu_qlinear_q8.default: glu_qlinear,
}
_GLU_OPS = (glu_qlinear, torch.ops.inductor_fuse.glu_qlinear_q8.default)


@torch.library.custom_op("inductor_fuse::realize", mutates_args=())
def realize(t: torch.Tensor) -> torch.Tensor:
    """t, as it is. In a compiled graph: a buffer of its own that its readers load, never
    recomputed inside them (Inductor inlines cheap pointwise producers into a reduction's inner
    loop: an RMSNorm's output re-derived for each of 262144 rows of a head), and never folded into
    a constant by freezing (a frozen weight stays as stored, read at run time). Eager: a copy (a
    custom op cannot alias its input)."""
    return t.clone()


@realize.register_fake
def _realize_fake(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


@register_lowering(realize._opoverload)
def _realize_lowering(t):
    t.realize()  # a no-op for a constant or an input: already a buffer
    return t


add_dont_constant_fold(realize._opoverload)


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable; elsewhere physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _glu(graph: fx.Graph, y: fx.Node, N: int, act: str, dtype: torch.dtype) -> fx.Node:
    """act(y[..., 0::2]) * y[..., 1::2] as the decomposed aten ops Inductor lowers (the activation in
    float32, as stock decompositions compute it for bf16 / fp16)."""
    gate = call(graph, aten.slice.Tensor, y, -1, 0, N, 2)
    up = call(graph, aten.slice.Tensor, y, -1, 1, N, 2)
    g = gate if dtype == torch.float32 else call(graph, prims.convert_element_type.default, gate, torch.float32)
    if act == "silu":
        a = call(graph, aten.mul.Tensor, g, call(graph, aten.sigmoid.default, g))
    else:  # 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3)))
        cube = call(graph, aten.mul.Tensor, call(graph, aten.mul.Tensor, g, g), g)
        inner = call(graph, aten.add.Tensor, g, call(graph, aten.mul.Tensor, cube, 0.044715))
        t = call(graph, aten.tanh.default, call(graph, aten.mul.Tensor, inner, 0.7978845608028654))
        a = call(graph, aten.mul.Tensor, call(graph, aten.mul.Tensor, g, 0.5), call(graph, aten.add.Tensor, t, 1))
    if dtype != torch.float32:
        a = call(graph, prims.convert_element_type.default, a, dtype)
    return call(graph, aten.mul.Tensor, a, up)


def _slices(x: torch.Tensor, N: int, nbytes: int) -> int:
    """How many slices of the weight's rows to run x @ w^T as (1: one mm): a float32 x of at most
    MAX_M rows (static) and a weight of SPLIT_BYTES or more, as many slices of a multiple of
    ROW_ALIGN rows as divide N, up to MAX_SLICES."""
    lead = x.shape[:-1]
    if x.dtype != torch.float32 or nbytes < SPLIT_BYTES or not all(isinstance(d, int) for d in lead):
        return 1
    if math.prod(lead) > MAX_M:
        return 1
    return max((c for c in range(1, MAX_SLICES + 1) if N % (c * ROW_ALIGN) == 0), default=1)


def _reads_codes(x: torch.Tensor, fmt: str) -> bool:
    """One float32 row of x (static) times a format with an int8 code form: y = sum(w * x) over
    the codes, w = scale * q - offset dequantized inside the sum."""
    lead = x.shape[:-1]
    return FORMATS[fmt].code_group is not None and x.dtype == torch.float32 and all(d == 1 for d in lead)


def _codes_bytes(fmt: str, N: int, K: int) -> int:
    """The memory the code form adds: int8 codes (unless a plane holds them as they are) and float32
    scales (and offsets) per group."""
    f = FORMATS[fmt]
    factors = N * (K // f.code_group) * 4 * (2 if f.code_offset else 1)
    return factors + (0 if f.codes_plane is not None else N * K)


def _codes_matvec(graph: fx.Graph, x: fx.Node, planes, fmt: str, N: int, K: int) -> fx.Node:
    """y [1, N] = sum_k w[n, k] x[k], w = scale * q - offset (WeightFormat.codes) computed inside
    the sum: one Inductor reduction over the int8 codes. The codes, scales and offsets are folded
    into constants by freezing; ``realize`` keeps the int8 codes from being folded on into float
    weights, and x from being recomputed inside the reduction."""
    f = FORMATS[fmt]
    ng = K // f.code_group

    def part(i: int) -> fx.Node:
        return call(graph, torch.ops.inductor_fuse.weight_codes.default, planes, fmt, i)

    q = planes[f.codes_plane] if f.codes_plane is not None else part(0)
    q = call(graph, aten.reshape.default, call(graph, realize._opoverload, q), [N, ng, f.code_group])
    q = call(graph, prims.convert_element_type.default, q, torch.float32)
    w = call(graph, aten.mul.Tensor, call(graph, aten.unsqueeze.default, part(1), -1), q)  # codes_to_float's order
    if f.code_offset:
        w = call(graph, aten.sub.Tensor, w, call(graph, aten.unsqueeze.default, part(2), -1))
    xs = call(graph, aten.reshape.default, call(graph, realize._opoverload, x), [1, ng, f.code_group])
    y = call(graph, aten.sum.dim_IntList, call(graph, aten.mul.Tensor, w, xs), [-1, -2])
    return call(graph, aten.reshape.default, y, [1, N])


def _why_not(node: fx.Node, frozen: set[fx.Node]) -> str | None:
    x, planes, bias = node.args[:3]
    for p in planes:
        if not folds_to_constant(p, frozen):
            return not_frozen_reason("plane", p)
    if bias is not None and not folds_to_constant(bias, frozen):
        return not_frozen_reason("bias", bias)
    if not all(isinstance(d, int) for p in planes for d in val(p).shape):
        return "symbolic weight shape"
    return None


@rule_family(
    FAMILY,
    order=90,
    kind=GRAPH_WALK,  # single nodes, but with a memory budget over the whole graph
    doc="on CPU, a quantized linear over frozen weights runs as a float GEMM on the weight dequantized at compile time",
)
def dequantize_on_cpu(graph: fx.Graph) -> int:
    rep = report.current()
    frozen = frozen_placeholders(graph)
    budget = int(available_memory() * MEMORY_FRACTION)
    rewrites = 0
    _split_glu_quantize_act(graph)
    nodes = [
        n for target in (qlinear, glu_qlinear, *_PLAIN) for n in graph.find_nodes(op="call_function", target=target)
    ]
    order = {n: i for i, n in enumerate(graph.nodes)}
    nodes.sort(key=order.__getitem__)  # graph order: the memory budget goes to the first ones
    for node in nodes:
        x, planes, bias, fmt = node.args[:4]
        act = node.args[4] if node.target in _GLU_OPS else None
        if val(x).device.type != "cpu":  # on GPU the Triton kernels run: not a candidate
            continue
        why = _why_not(node, frozen)
        if why is None:
            N, K = FORMATS[fmt].check_planes([val(p) for p in planes])[1:]  # from the weight: static
            codes = _reads_codes(val(x), fmt)
            nbytes = _codes_bytes(fmt, N, K) if codes else N * K * val(x).dtype.itemsize
        if why is None and nbytes > budget:
            mib = f"{nbytes / 2**20:.0f} MiB, budget left {budget / 2**20:.0f} MiB"
            what = "int8 codes and scales" if codes else "float weight"
            why = f"its {what} would not fit the memory budget ({mib})"
        if why is not None:
            rep.skipped.append(report.Skip(FAMILY, (node.name,), why))
            if node.target in _PLAIN:  # the reference runs: on x, the int8 activation unread
                plain = _PLAIN[node.target]  # its arguments: the q8 variant's without (xa, interleave, max_m)
                node.target, node.args = plain, node.args[: len(plain._schema.arguments)]
            continue
        budget -= nbytes
        dtype = val(x).dtype
        slices = _slices(val(x), N, nbytes) if bias is None and not codes else 1
        with graph.inserting_before(node):
            x2 = x if val(x).dim() == 2 else call(graph, aten.reshape.default, x, [-1, K])
            if codes:
                y = _codes_matvec(graph, x2, planes, fmt, N, K)
                if bias is not None:
                    y = call(graph, aten.add.Tensor, y, bias)
            else:  # the weight dequantized: folded into a constant by freezing
                w = call(graph, torch.ops.inductor_fuse.dequantize.default, planes, fmt, dtype)
                if slices > 1:
                    y = call(graph, torch.ops.inductor_fuse.sliced_linear.default, x2, w, slices)
                elif bias is None:
                    y = call(graph, aten.mm.default, x2, call(graph, aten.permute.default, w, [1, 0]))
                else:
                    b = bias if val(bias).dtype == dtype else call(graph, aten._to_copy.default, bias, dtype=dtype)
                    y = call(graph, aten.addmm.default, b, x2, call(graph, aten.permute.default, w, [1, 0]))
            if val(x).dim() != 2:  # back to x's leading dims (symbolic ones read from x)
                lead = [
                    d if isinstance(d, int) else call(graph, aten.sym_size.int, x, i)
                    for i, d in enumerate(val(x).shape[:-1])
                ]
                y = call(graph, aten.reshape.default, y, [*lead, N])
            if act is not None:  # glu_qlinear: act(gate) * up of the interleaved columns
                y = _glu(graph, y, N, act, dtype)
        copy_meta(node, y)
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        glu = f", then {act}(gate) * up" if act else ""
        how = f", sliced_linear over {slices} slices of its rows" if slices > 1 else ""
        if codes:
            detail = f"[{N}, {K}] {fmt} -> one reduction over its int8 codes, read at run time{glu}"
        else:
            detail = f"[{N}, {K}] {fmt} -> {str(dtype).removeprefix('torch.')} ({nbytes / 2**20:.1f} MiB){how}{glu}"
        record_rewrite(FAMILY, node, detail)
        rewrites += 1
    _erase_unread_quantize_act(graph)
    _unfuse_unread_rmsnorm_quantize_act(graph)
    _unfuse_unread_attention_quantize_act(graph)
    _unfuse_rope_cache(graph)
    return rewrites


def _split_glu_quantize_act(graph: fx.Graph) -> None:
    """Each CPU glu_qlinear_q8_quantize_act becomes the glu_qlinear_q8 and the quantize_act of its
    output that it fuses (the same values), so the GLU is rewritten below like any other and the
    quantize_act, once nothing reads it, erased."""
    ops = torch.ops.inductor_fuse
    for fused in graph.find_nodes(op="call_function", target=ops.glu_qlinear_q8_quantize_act.default):
        if val(fused.args[0]).device.type != "cpu":
            continue
        with graph.inserting_before(fused):
            y = call(graph, ops.glu_qlinear_q8.default, *fused.args[:8])
            qa = call(graph, ops.quantize_act.default, y, *fused.args[8:10])
        copy_meta(fused, y)
        copy_meta(fused, qa)
        for part in list(fused.users):  # getitem(fused, i): y, then the four int8-side tensors
            i = part.args[1]
            if i == 0:
                part.replace_all_uses_with(y)
                graph.erase_node(part)
            else:
                part.args = (qa, i - 1)
        graph.erase_node(fused)


def _erase_unread_quantize_act(graph: fx.Graph) -> None:
    """Erase each quantize_act (and its getitems) whose outputs nothing reads any more."""
    for qa in graph.find_nodes(op="call_function", target=torch.ops.inductor_fuse.quantize_act.default):
        parts = list(qa.users)
        if all(p.target is operator.getitem and not p.users for p in parts):
            for p in parts:
                graph.erase_node(p)
            graph.erase_node(qa)


def _unfuse_unread_rmsnorm_quantize_act(graph: fx.Graph) -> None:
    """Each rmsnorm_quantize_act / add_rmsnorm_quantize_act whose int8 outputs nothing reads any
    more (the reshapes of them act_quant made included) becomes its (add and) RMSNorm again: the
    aten ops of the graph it replaced, in its order (RMSNorm in act_quant.match_rmsnorm), so
    Inductor compiles what it compiled before."""
    ops = torch.ops.inductor_fuse
    for target, add in ((ops.rmsnorm_quantize_act.default, False), (ops.add_rmsnorm_quantize_act.default, True)):
        for fused in graph.find_nodes(op="call_function", target=target):
            _unfuse(graph, fused, add)


def _unfuse_unread_attention_quantize_act(graph: fx.Graph) -> None:
    """Each decode_attention_quantize_act whose int8 outputs nothing reads any more becomes the
    decode_attention it was."""
    ops = torch.ops.inductor_fuse
    for fused in graph.find_nodes(op="call_function", target=ops.decode_attention_quantize_act.default):
        parts = _unread_int8_parts(graph, fused, 0)
        if parts is None:
            continue
        with graph.inserting_before(fused):
            attn = call(graph, ops.decode_attention.default, *fused.args[:6])
        copy_meta(fused, attn)
        if 0 in parts:
            parts[0].replace_all_uses_with(attn)
        for p in parts.values():
            graph.erase_node(p)
        graph.erase_node(fused)


def _unfuse_rope_cache(graph: fx.Graph) -> None:
    """Each rope_cache_write on CPU becomes the aten ops it computes (rope_cache_write_reference's,
    functional: an index_put whose result the graph copies back), which Inductor compiles into its
    own C++ kernels: the op's pure-torch body costs about 0.4 ms a call there (20 ms per Gemma-3-270M
    token on 2 cores)."""
    rope_op = torch.ops.inductor_fuse.rope_cache_write.default
    for fused in graph.find_nodes(op="call_function", target=auto_functionalized):
        if fused.args[0] is not rope_op or val(fused.kwargs["q"]).device.type != "cpu":
            continue
        a = fused.kwargs
        with graph.inserting_before(fused):
            q, k = a["q"], a["k"]
            if a["q_w"] is not None:
                norm = (a["eps"], a["w_offset"], a["cast_before_weight"])
                q, k = _rmsnorm_nodes(graph, q, a["q_w"], *norm), _rmsnorm_nodes(graph, k, a["k_w"], *norm)
            q, k = _rope_nodes(graph, q, a["cos"], a["sin"]), _rope_nodes(graph, k, a["cos"], a["sin"])
            kv = a["kv"]
            kt, vt = (call(graph, aten.permute.default, t, [0, 2, 1, 3]) for t in (k, a["v"]))
            new = call(graph, aten.cat.default, [call(graph, aten.unsqueeze.default, t, 0) for t in (kt, vt)])
            if val(new).dtype != val(kv).dtype:
                new = call(graph, prims.convert_element_type.default, new, val(kv).dtype)
            kv2 = call(graph, aten.index_put.default, kv, [None, None, None, a["pos"]], new)
        for part in list(fused.users):
            part.replace_all_uses_with(q if part.args[1] == 0 else kv2)
            graph.erase_node(part)
        graph.erase_node(fused)


def _rope_nodes(graph: fx.Graph, x: fx.Node, cos: fx.Node, sin: fx.Node) -> fx.Node:
    """The aten ops of rope_cache.py's rope of x (float32 x * cos + rotate_half(x) * sin, in x's dtype)."""
    dtype, D = val(x).dtype, val(x).shape[-1]
    xf = x if dtype == torch.float32 else call(graph, prims.convert_element_type.default, x, torch.float32)
    x1, x2 = (call(graph, aten.slice.Tensor, xf, -1, a, b) for a, b in ((0, D // 2), (D // 2, D)))
    rot = call(graph, aten.cat.default, [call(graph, aten.neg.default, x2), x1], -1)
    y = call(graph, aten.add.Tensor, call(graph, aten.mul.Tensor, xf, cos), call(graph, aten.mul.Tensor, rot, sin))
    return y if dtype == torch.float32 else call(graph, prims.convert_element_type.default, y, dtype)


def _unread_int8_parts(graph: fx.Graph, fused: fx.Node, first: int) -> dict[int, fx.Node] | None:
    """{output index counting the main output as 0: getitem} of a fused op whose four int8-side
    outputs (indices 1..4) nothing reads once their unread reshapes are erased, else None."""
    parts = {p.args[1] - first: p for p in fused.users}
    for i in range(1, 5):
        for user in list(parts[i].users) if i in parts else ():
            if user.target in (aten.reshape.default, aten.view.default) and not user.users:
                graph.erase_node(user)
    if any(parts[i].users for i in range(1, 5) if i in parts):
        return None
    return parts


def _unfuse(graph: fx.Graph, fused: fx.Node, add: bool) -> None:
    parts = _unread_int8_parts(graph, fused, int(add))  # output index (counting y as 0) -> getitem node
    if parts is None:
        return
    args = list(fused.args)
    with graph.inserting_before(fused):
        if add:
            a, b = args.pop(0), args.pop(0)
            if len(args) > 6 and args[6] is not None:  # b's own norm (b_w, b_eps, b_w_offset, b_cast_before_weight)
                b = _rmsnorm_nodes(graph, b, *args[6:10])
            s = call(graph, aten.add.Tensor, a, b)
            copy_meta(fused, s)
            args.insert(0, s)
        h = args[0]
        y = _rmsnorm_nodes(graph, *args[:5])
    copy_meta(fused, y)
    if add and -1 in parts:
        parts[-1].replace_all_uses_with(h)
    if 0 in parts:
        parts[0].replace_all_uses_with(y)
    for p in parts.values():
        graph.erase_node(p)
    graph.erase_node(fused)


def _rmsnorm_nodes(graph: fx.Graph, h: fx.Node, w, eps: float, w_offset: float, cast_before_weight: bool) -> fx.Node:
    """The aten ops of an RMSNorm of h as act_quant.match_rmsnorm matches them (rmsnorm_reference's
    order); returns the output node."""
    dtype = val(h).dtype
    f32 = torch.float32
    h32 = h if dtype == f32 else call(graph, prims.convert_element_type.default, h, f32)
    mean = call(graph, aten.mean.dim, call(graph, aten.pow.Tensor_Scalar, h32, 2), [-1], True)
    n = call(graph, aten.mul.Tensor, h32, call(graph, aten.rsqrt.default, call(graph, aten.add.Tensor, mean, eps)))
    if cast_before_weight:
        nc = n if dtype == f32 else call(graph, prims.convert_element_type.default, n, dtype)
        return call(graph, aten.mul.Tensor, w, nc)
    w32 = w if val(w).dtype == f32 else call(graph, prims.convert_element_type.default, w, f32)
    if w_offset:
        w32 = call(graph, aten.add.Tensor, w32, w_offset)
    y = call(graph, aten.mul.Tensor, n, w32)
    return y if dtype == f32 else call(graph, prims.convert_element_type.default, y, dtype)
