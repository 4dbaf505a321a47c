"""Rule family ``decode_attention``: attention of a few new tokens over a static KV cache becomes
``inductor_fuse.decode_attention``, a split-K kernel that reads only the cache tiles the mask
reaches.

    out = SDPA(q [B, Hq, S, D], k [B, Hkv*, T, D], v, attn_mask = where(mask, 0, -inf) | mask)
 =>
    out = decode_attention(q, k, v, mask, scale, softcap=0)      (S <= MAX_QUERY_ROWS)

SDPA reaches the post-grad graph as one of several backend ops (``_scaled_dot_product_flash_
attention_for_cpu`` on CPU, ``_scaled_dot_product_efficient_attention`` / ``cudnn`` on CUDA, the
math op) with different signatures; the rule binds each to its schema. It matches when
- the query has at most MAX_QUERY_ROWS rows (decode, speculative drafts: prefill keeps the stock
  path) and the keys at least as many positions;
- there is a mask and it is boolean, or the additive ``where(mask, 0, -inf)`` that SDPA makes of a
  boolean one (-65504 in place of -inf on CUDA, in float16 / bfloat16: MASKED_OUT, where rows that
  attend nowhere are made to attend everywhere, as SDPA's finite fill does): the mask says which
  positions are live, so the kernel skips every cache tile whose mask is all False (the unwritten
  tail of the cache, positions outside a sliding window). A float bias of unknown origin does not
  say that, nor does a finite fill below -65536 (finfo.min): the report says so and the stock path
  runs;
- no dropout, not ``is_causal`` (a causal flag over a cache aligns to the wrong corner), only the
  attention output is used (no log-sum-exp for a backward).
K and V are taken from before a ``repeat_kv`` (unsqueeze, expand, clone, view: how a model without
native GQA repeats KV heads), so the kernel reads each KV head once.

A graph walk (``GRAPH_WALK``): one node whose target is any of five ops with different argument
lists, plus optional chains on k, v and the mask; five pattern-matcher patterns per chain variant
would say the same at much greater length.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from .. import (
    attention,  # noqa: F401 -- defines torch.ops.inductor_fuse.decode_attention, emitted below
    report,
)
from .graph_utils import call, record_rewrite, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "decode_attention"
MAX_QUERY_ROWS = 16  # decode and speculative drafts; longer queries (prefill) keep the stock path
aten = torch.ops.aten

# the SDPA ops as they reach the post-grad graph, and the name of their mask argument
_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
    aten._scaled_dot_product_attention_math.default: "attn_mask",
    aten.scaled_dot_product_attention.default: "attn_mask",
}


def _strip_repeat_kv(node: fx.Node) -> fx.Node:
    """k or v before ``repeat_kv`` ([B, Hkv, T, D] -> unsqueeze(2) -> expand(B, Hkv, n, T, D) ->
    clone -> view(B, Hkv * n, T, D)); the node itself when it is not that chain."""
    chain = node
    if chain.target in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
        chain = chain.args[0]
        if chain.target in (aten.clone.default,):
            chain = chain.args[0]
        if chain.target is aten.expand.default:
            chain = chain.args[0]
            if chain.target is aten.unsqueeze.default and chain.args[1] == 2:
                src = chain.args[0]
                if val(src).dim() == 4 and val(src).shape[2:] == val(node).shape[2:]:
                    return src
    return node


# What SDPA fills a boolean mask's False positions with: -inf, or -65504 (the float16 minimum;
# -65536 in bfloat16) where the CUDA backends convert it (cuDNN attention). Added to a score, either
# leaves a weight of exp(-65504) = 0 in float32: the position is not read -- in a row that attends
# somewhere. In a row that attends nowhere the two differ: with -inf SDPA's answer is 0 (or NaN,
# by backend), the op's 0; with a finite fill every score is shifted alike, so SDPA's answer is the
# softmax over the whole buffer. For a finite fill the rule therefore hands the op the mask with
# such rows made all True (`_attend_everywhere`): the same softmax, up to the rounding of the fill's
# addition to a score (2^-8 at 65536), which only a half-precision graph, whose output rounds
# coarser, can take. A finite fill below -65536 (finfo.min, -1e9) swallows the scores too, so SDPA
# gives such a row the plain mean of V: no mask says that; the stock path runs.
MASKED_OUT = -65504.0
LOWEST_FINITE_FILL = -65536.0
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _full_value(node: object) -> float | None:
    """v when node is aten.full(..., v) with a number v, else None."""
    if isinstance(node, fx.Node) and node.target is aten.full.default and isinstance(node.args[1], (int, float)):
        return node.args[1]
    return None


def _bool_mask(mask: fx.Node | None, dtype: torch.dtype) -> tuple[fx.Node | None, bool, str | None]:
    """The boolean mask behind SDPA's mask argument, whether SDPA fills its False positions with a
    finite value (MASKED_OUT's comment), or (None, False, why not). ``dtype``: the query's."""
    if mask is None:
        return None, False, "no mask: the live part of the cache cannot be told"
    # look through broadcasts: the op takes [1|B, 1|Hq, S, T]
    while mask.target is aten.expand.default:
        mask = mask.args[0]
    if val(mask).dtype == torch.bool:
        return mask, False, None
    if mask.target is aten.where.self:
        cond, a, b = mask.args
        fill = _full_value(b)
        if _full_value(a) == 0.0 and fill is not None and fill <= MASKED_OUT and val(cond).dtype == torch.bool:
            while cond.target is aten.expand.default:
                cond = cond.args[0]
            if fill == -math.inf:
                return cond, False, None
            why = None
            if fill < LOWEST_FINITE_FILL:
                why = "a row that attends nowhere would average V over the whole buffer, which the kernel does not give"
            elif dtype not in HALF_DTYPES:
                why = (
                    f"in {str(dtype).removeprefix('torch.')}, a row that attends nowhere would show the rounding of "
                    "the fill's addition to its scores (only a half-precision graph can take it)"
                )
            if why is None:
                return cond, True, None
            return None, False, f"the mask {mask.name} fills with {fill:g}, not -inf: {why}"
    why = (
        f"the mask {mask.name} is a float bias, not where(bool, 0, -inf or <= -65504): the live positions are not known"
    )
    return None, False, why


def _attend_everywhere(graph: fx.Graph, mask: fx.Node) -> fx.Node:
    """``mask | ~mask.any(-1)``: rows that attend nowhere made to attend everywhere (inserted at the
    graph's insertion point), what SDPA does with a finite fill."""
    nowhere = call(graph, aten.logical_not.default, call(graph, aten.any.dim, mask, -1, True))
    return call(graph, aten.logical_or.default, mask, nowhere)


def _why_not(node: fx.Node, a: dict) -> str | None:
    q, k, v = val(a["query"]), val(a["key"]), val(a["value"])
    if a.get("dropout_p", 0.0) != 0.0:
        return "dropout"
    if a.get("is_causal", False):
        return "is_causal: no mask says which positions are live"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v are not 4-D ({q.dim()}, {k.dim()}, {v.dim()})"
    S, T = q.shape[2], k.shape[2]
    if not isinstance(S, int) or not isinstance(T, int):
        return "symbolic query or cache length (a graph for every prompt length): decode graphs have static ones"
    if S > MAX_QUERY_ROWS:
        return f"{S} query rows (prefill): more than {MAX_QUERY_ROWS}"
    if T < S:
        return f"{T} key positions for {S} queries: not a cache"
    if not (q.dtype == k.dtype == v.dtype):
        return f"mixed dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    others = [u for u in node.users if not (u.target is operator.getitem and u.args[1] == 0)]
    if others and node.target is not aten.scaled_dot_product_attention.default:
        return "an output other than the attention (log-sum-exp) is used"
    return None


@rule_family(
    FAMILY,
    order=40,
    kind=GRAPH_WALK,  # five SDPA ops with different signatures, optional repeat_kv / expand chains
    doc="SDPA of <= 16 query rows over a masked KV cache becomes a split-K kernel reading only live tiles",
)
def fuse_decode_attention(graph: fx.Graph) -> int:
    rep = report.current()
    rewrites = 0
    everywhere: dict[fx.Node, fx.Node] = {}  # a mask -> its _attend_everywhere, made once for all its layers
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA:
            continue
        bound = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
        a = dict(bound.kwargs)
        why = _why_not(node, a)
        mask, finite_fill = None, False
        if why is None:
            mask, finite_fill, why = _bool_mask(a.get(_SDPA[node.target]), val(a["query"]).dtype)
        if why is None:
            q = a["query"]
            k, v = _strip_repeat_kv(a["key"]), _strip_repeat_kv(a["value"])
            Hq, Hkv = val(q).shape[1], val(k).shape[1]
            mshape = tuple(val(mask).shape)
            if Hq % Hkv or val(v).shape[1] != Hkv:
                why = f"query heads {Hq} are not a multiple of KV heads {Hkv}"
            elif len(mshape) != 4 or mshape[0] not in (1, val(q).shape[0]) or mshape[1] not in (1, Hq):
                why = f"mask shape {mshape}: not [1|B, 1|Hq, S, T]"
        if why is not None:
            rep.skipped.append(report.Skip(FAMILY, (node.name,), why))
            continue
        scale = a.get("scale") or 1.0 / math.sqrt(val(q).shape[-1])
        with graph.inserting_before(node):
            if finite_fill:  # (made before the first attention over this mask: the later ones follow it)
                if mask not in everywhere:
                    everywhere[mask] = _attend_everywhere(graph, mask)
                mask = everywhere[mask]
            out = call(graph, torch.ops.inductor_fuse.decode_attention.default, q, k, v, mask, float(scale), 0.0)
        if node.target is aten.scaled_dot_product_attention.default:
            node.replace_all_uses_with(out)
        else:
            for user in list(node.users):
                user.replace_all_uses_with(out)
                graph.erase_node(user)
        graph.erase_node(node)
        qs, ks = list(val(q).shape), list(val(k).shape)
        detail = f"q{qs} over k{ks} {str(val(q).dtype).removeprefix('torch.')}, mask {list(val(mask).shape)}"
        if finite_fill:
            detail += " (finite fill: a row that attends nowhere attends everywhere, as in SDPA)"
        record_rewrite(FAMILY, node, detail)
        rewrites += 1
    return rewrites
