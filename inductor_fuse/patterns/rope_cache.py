"""Rule family ``rope_cache``: at decode, the QK-norm, the rope on q and k and the KV-cache write in
front of a decode attention become one op, ``inductor_fuse.rope_cache_write`` (one launch per layer
where Inductor emits two for Llama and four for Gemma 3: each norm's reduction, the q rope, the
stacked K/V write).

    q' = rope(norm(q), cos, sin);  k' = rope(norm(k), cos, sin)        (norm: QK-norm or none)
    kv2 = index_put(kv, [None, None, None, pos], stack(k'^T, v^T))       (kv: [2, B, Hkv, T, D], a graph
    attention(q'^T, kv2[0], kv2[1], ...);  copy_(kv, kv2)                 input the graph writes back)
 =>
    q'', kv2 = auto_functionalized(rope_cache_write, q, k, v, cos, sin, q_w, k_w, ..., kv=kv, pos=pos)

``auto_functionalized`` is how a mutating op lives in a functional graph: Inductor's reinplacing
pass then writes kv in place (the ``copy_`` back to the input proves no one else reads the old
cache), so no copy of the cache is made. The rule starts at each ``decode_attention`` (or its
quantizing form) that the ``decode_attention`` rule emitted, so it only fires at decode (few query
rows) and needs that family on. It matches the cache of models/transformer.py (K and V in one
buffer, one index_put) and its RMSNorm and rope arithmetic (float32, rotate-half); anything else
is left alone, with the reason in the report.

A graph walk (``GRAPH_WALK``): from the attention back through two ropes, two optional norms and a
cache write; the pattern matcher would need one pattern per norm flavour and cache layout.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized

from .. import (
    report,
    rope_cache,  # noqa: F401 -- defines torch.ops.inductor_fuse.rope_cache_write, emitted below
)
from .act_quant import match_rmsnorm
from .graph_utils import is_call, record_rewrite, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "rope_cache"
aten = torch.ops.aten
prims = torch.ops.prims
_ATTENTION = ("decode_attention", "decode_attention_quantize_act")
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _same(a: object, b: object) -> bool:
    """a and b compute one value: the same node, or the same pure op of the same arguments (the
    graph makes cos and sin once per rope: select(unsqueeze(unsqueeze(table[pos])))."""
    if a is b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return not isinstance(a, fx.Node) and not isinstance(b, fx.Node) and a == b
    pure = (aten.select.int, aten.unsqueeze.default, aten.slice.Tensor, aten.index.Tensor, aten.expand.default)
    pure += _VIEWS + (prims.convert_element_type.default,)
    return is_call(a, *pure) and a.target is b.target and a.kwargs == b.kwargs and _same(a.args, b.args)


def _transposed(node: object) -> fx.Node | None:
    """x of permute(x, [0, 2, 1, 3]) (the [B, S, H, D] <-> [B, H, S, D] swap), else None."""
    if is_call(node, aten.permute.default) and list(node.args[1]) == [0, 2, 1, 3]:
        return node.args[0]
    if is_call(node, aten.transpose.int) and sorted(a % 4 for a in node.args[1:3]) == [1, 2]:
        return node.args[0]
    return None


def _halves(xf: fx.Node, a: object, b: object) -> bool:
    """a, b are xf[..., :D/2] and xf[..., D/2:] (chunk / split getitems, or slices)."""
    D = val(xf).shape[-1]
    if all(is_call(n, operator.getitem) for n in (a, b)):
        sp = a.args[0]
        if sp is not b.args[0] or (a.args[1], b.args[1]) != (0, 1) or not is_call(sp, aten.split.Tensor):
            return False
        return sp.args[0] is xf and sp.args[1] == D // 2 and sp.args[2] in (-1, 3) and len(sp.users) == 2

    def sliced(n, start, end):
        return (
            is_call(n, aten.slice.Tensor)
            and n.args[0] is xf
            and n.args[1] in (-1, 3)
            and n.args[2] == start
            and (n.args[3] if len(n.args) > 3 else end) >= end
        )

    return sliced(a, 0, D // 2) and sliced(b, D // 2, D)


def match_rope(out: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, list[fx.Node]] | None:
    """(x, cos, sin, nodes) of out = dtype(xf * cos + cat(-x2, x1) * sin), xf = float32(x) (or x
    itself), x1 / x2 its halves: models/transformer.py's apply_rope; else None. x is in out's dtype,
    or in float32 where the graph dropped a round trip through it (below)."""
    dtype = val(out).dtype
    add, nodes = out, []
    if dtype != torch.float32:
        if not is_call(out, prims.convert_element_type.default):
            return None
        add, nodes = out.args[0], [out]
    if not is_call(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs or val(add).dtype != torch.float32:
        return None
    for m1, m2 in (add.args, add.args[::-1]):
        if not (is_call(m1, aten.mul.Tensor) and is_call(m2, aten.mul.Tensor)):
            continue
        for xf, cos in (m1.args, m1.args[::-1]):
            for cat, sin in (m2.args, m2.args[::-1]):
                if not (is_call(cat, aten.cat.default) and isinstance(xf, fx.Node) and isinstance(cos, fx.Node)):
                    continue
                parts = cat.args[0]
                if (cat.args[1] if len(cat.args) > 1 else 0) not in (-1, 3) or len(parts) != 2:
                    continue
                neg, x1 = parts
                if not is_call(neg, aten.neg.default) or not _halves(xf, x1, neg.args[0]):
                    continue
                if not isinstance(sin, fx.Node) or val(xf).dtype != torch.float32:
                    continue
                x = xf
                chain = [cat, neg, x1, neg.args[0], m1, m2, add, *nodes]
                if is_call(x1, operator.getitem):
                    chain.append(x1.args[0])
                if is_call(xf, prims.convert_element_type.default):  # float32(x): x in dtype, or already float32
                    x, chain = xf.args[0], [xf, *chain]
                return x, cos, sin, chain
    return None


def _only_read_inside(nodes: list[fx.Node], ends: set[fx.Node]) -> str | None:
    inside = set(nodes)
    for n in nodes:
        if n in ends:
            continue
        outside = [u.name for u in n.users if u not in inside]
        if outside:
            return f"{n.name} (inside the norm / rope) is also read by {', '.join(outside)}"
    return None


def _cache_write(kv2: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, fx.Node, fx.Node] | str:
    """(kv, pos, k', v, copy_) of kv2 = index_put(kv, [None]*3 + [pos], stack(k'^T, v^T)) whose kv
    the graph writes back; else why not."""
    if not is_call(kv2, aten.index_put.default) or len(kv2.args) != 3 or kv2.kwargs:
        return "K and V are not read from an index_put on one [2, B, Hkv, T, D] cache"
    kv, indices, values = kv2.args
    if not (isinstance(kv, fx.Node) and kv.op == "placeholder" and val(kv).dim() == 5 and val(kv).shape[0] == 2):
        return "the cache is not a [2, B, Hkv, T, D] graph input"
    if len(indices) != 4 or any(i is not None for i in indices[:3]) or not isinstance(indices[3], fx.Node):
        return "the cache is not written at positions of its sequence dim"
    pos = indices[3]
    if val(pos).dim() != 1 or val(pos).dtype not in (torch.int32, torch.int64):
        return "the positions are not an int vector"
    copies = [u for u in kv2.users if is_call(u, aten.copy_.default) and u.args[0] is kv and u.args[1] is kv2]
    if len(copies) != 1:
        return "the written cache is not copied back to its input (a functional cache: a copy per step)"
    while is_call(values, *_VIEWS, prims.convert_element_type.default):
        values = values.args[0]
    if not is_call(values, aten.cat.default, aten.stack.default) or len(values.args[0]) != 2:
        return "the new K and V are not one stack / cat"
    if (values.args[1] if len(values.args) > 1 else 0) != 0:
        return "the new K and V are not stacked along a new leading dim"
    kt, vt = values.args[0]
    unsqueezed = is_call(kt, aten.unsqueeze.default) and is_call(vt, aten.unsqueeze.default)
    if values.target is aten.cat.default and unsqueezed:
        kt, vt = kt.args[0], vt.args[0]
    k, v = _transposed(kt), _transposed(vt)
    if k is None or v is None:
        return "the new K and V are not [B, S, Hkv, D] tensors transposed to [B, Hkv, S, D]"
    if len(k.users) != 1 or len(kt.users) != 1:
        return f"the new K {k.name} is also read elsewhere than the cache write"
    return kv, pos, k, v, copies[0]


def _source(x: fx.Node, dtype: torch.dtype) -> tuple[fx.Node, object, list[fx.Node]] | str:
    """(the op's input, the QK-norm record or None, the norm's nodes) for a rope of x whose output
    is in dtype; or why it cannot be fused. torch 2.11's post-grad passes drop the round trip
    float32 -> dtype -> float32 between the norm and the rope, so x may be the norm's float32
    product; the op rounds there as the model's code does."""
    norm, why = match_rmsnorm(x, whole_tiles=False)
    if norm is None:
        if why is not None:
            return why
        if val(x).dtype != dtype:
            return f"the rope reads a {val(x).dtype} value, not one in its output's dtype {dtype}"
        return x, None, []
    if norm.out is not x:
        return "a reshape between the QK-norm and the rope"
    h, nodes = norm.h, list(norm.removed)
    if val(h).dtype != dtype and is_call(h, prims.convert_element_type.default) and val(h.args[0]).dtype == dtype:
        h, nodes = h.args[0], [norm.h, *nodes]  # the float32 norm of a dtype value
    if val(h).dtype != dtype:
        return f"the QK-norm normalizes a {val(h).dtype} value, not one in the rope's dtype {dtype}"
    return h, dataclasses.replace(norm, h=h), nodes


def _why_not(attn: fx.Node) -> str | tuple:
    qt, kc, vc = attn.args[:3]
    if not (is_call(kc, aten.select.int) and is_call(vc, aten.select.int)) or kc.args[0] is not vc.args[0]:
        return "K and V are not two halves of one cache buffer"
    if (kc.args[1], kc.args[2], vc.args[1], vc.args[2]) != (0, 0, 0, 1):
        return "K and V are not kv[0] and kv[1] of one cache buffer"
    write = _cache_write(kc.args[0])
    if isinstance(write, str):
        return write
    kv, pos, kr, v, _ = write
    qr = _transposed(qt)
    if qr is None:
        return "the query is not a [B, S, Hq, D] tensor transposed"
    qrope, krope = match_rope(qr), match_rope(kr)
    if qrope is None or krope is None:
        return "no rope (float32 x * cos + rotate_half(x) * sin) on both the query and the key"
    (qn, cos, sin, qnodes), (kn, kcos, ksin, knodes) = qrope, krope
    if not (_same(cos, kcos) and _same(sin, ksin)):
        return "the query and the key are rotated by different cos / sin"
    qsrc, ksrc = _source(qn, val(qr).dtype), _source(kn, val(kr).dtype)
    for what in (qsrc, ksrc):
        if isinstance(what, str):
            return what
    (q, qrec, qnorm_nodes), (k, krec, knorm_nodes) = qsrc, ksrc
    if (qrec is None) != (krec is None):
        return "a norm on only one of the query and the key"
    if qrec is not None:
        if (qrec.eps, qrec.w_offset, qrec.cast_before_weight) != (krec.eps, krec.w_offset, krec.cast_before_weight):
            return "the query's and the key's norms differ in eps, weight offset or cast order"
        wdt = {val(qrec.w).dtype, val(krec.w).dtype}
        if len(wdt) != 1 or not wdt <= {val(q).dtype, torch.float32}:
            return f"QK-norm weights in {sorted(map(str, wdt))}: not both in q's dtype or both float32"
    why = _only_read_inside([*qnorm_nodes, *qnodes], {qr}) or _only_read_inside([*knorm_nodes, *knodes], {kr})
    if why is not None:
        return why
    shapes = [val(n).shape for n in (q, k, v)]
    if any(len(s) != 4 for s in shapes) or shapes[0][:2] != shapes[1][:2] or shapes[1] != shapes[2]:
        return f"q, k, v shapes {[list(s) for s in shapes]} are not [B, S, H, D]"
    if val(cos).dim() != 4 or val(cos).shape[2] != 1 or val(sin).shape != val(cos).shape:
        return f"cos / sin of shape {list(val(cos).shape)}: not [1|B, S, 1, D]"
    if val(kv).dtype != val(q).dtype and val(kv).dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"a {val(kv).dtype} cache"
    return q, k, v, cos, sin, qrec, krec, kv, pos, qr, kc.args[0]


def _erase_dead(nodes: list[fx.Node]) -> None:
    """Erase nodes without users, then their inputs that are left without users (pure ops only)."""
    work, erased = list(nodes), set()
    while work:
        n = work.pop()
        if n not in erased and n.op == "call_function" and not n.users and not n.is_impure():
            work.extend(n.all_input_nodes)
            n.graph.erase_node(n)
            erased.add(n)


@rule_family(
    FAMILY,
    order=45,
    kind=GRAPH_WALK,  # from the attention back through two ropes, two optional norms, a cache write
    doc="QK-norm, rope on q and k and the KV-cache write before a decode attention become one op",
)
def fuse_rope_cache(graph: fx.Graph) -> int:
    rep = report.current()
    rewrites = 0
    targets = tuple(getattr(torch.ops.inductor_fuse, name).default for name in _ATTENTION)
    tables: list[tuple[fx.Node, fx.Node]] = []  # the (cos, sin) of the rewrites so far
    for attn in [n for n in graph.nodes if n.op == "call_function" and n.target in targets]:
        found = _why_not(attn)
        if isinstance(found, str):
            rep.skipped.append(report.Skip(FAMILY, (attn.name,), found))
            continue
        q, k, v, cos, sin, norm, knorm, kv, pos, qr, kv2 = found
        # one (cos, sin) node pair for every layer that computes the same, so that Inductor
        # realizes the rope row once for all the layers' ops
        cos, sin = next(((c, s) for c, s in tables if _same(c, cos) and _same(s, sin)), (cos, sin))
        if (cos, sin) not in tables:
            tables.append((cos, sin))
        order = {n: i for i, n in enumerate(graph.nodes)}
        first_use = min((u for n in (qr, kv2) for u in n.users), key=order.__getitem__)
        inputs = [q, k, v, cos, sin, kv, pos] + ([norm.w, knorm.w] if norm else [])
        if any(order[n] > order[first_use] for n in inputs):
            rep.skipped.append(report.Skip(FAMILY, (attn.name,), "an input is made after the rope is read"))
            continue
        with graph.inserting_before(first_use):
            fused = graph.call_function(
                auto_functionalized,
                (torch.ops.inductor_fuse.rope_cache_write.default,),
                {
                    "q": q,
                    "k": k,
                    "v": v,
                    "cos": cos,
                    "sin": sin,
                    "q_w": norm.w if norm else None,
                    "k_w": knorm.w if norm else None,
                    "eps": norm.eps if norm else 0.0,
                    "w_offset": norm.w_offset if norm else 0.0,
                    "cast_before_weight": norm.cast_before_weight if norm else False,
                    "kv": kv,
                    "pos": pos,
                },
            )
            q_out = graph.call_function(operator.getitem, (fused, 0))
            kv_out = graph.call_function(operator.getitem, (fused, 1))
        fused.meta["val"] = (val(qr).new_empty(val(qr).shape), val(kv2))
        q_out.meta["val"], kv_out.meta["val"] = fused.meta["val"]
        qr.replace_all_uses_with(q_out)
        kv2.replace_all_uses_with(kv_out)
        _erase_dead([qr, kv2])
        detail = (
            f"q{list(val(q).shape)} k{list(val(k).shape)} into kv{list(val(kv).shape)} "
            f"{str(val(q).dtype).removeprefix('torch.')}, {'QK-norm ' + norm.describe() if norm else 'no QK-norm'}"
        )
        record_rewrite(FAMILY, qr, detail)
        rewrites += 1
    return rewrites
