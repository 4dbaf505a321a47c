"""Rule family ``conv1d``: a depthwise causal 1-D convolution, and the SiLU after it, become one
``inductor_fuse.depthwise_conv1d`` (the short convolution of Mamba-style and GatedDeltaNet layers).

    y = silu?( slice?( convolution(pad?(x), w [C, 1, K], b, stride 1, padding p, dilation 1, groups C) ) )
 =>
    y = depthwise_conv1d(x, w.view(C, K), b, pad, start, length, silu)

The spellings that reach the graph:
- ``nn.Conv1d(C, C, K, groups=C, padding=K - 1)`` then ``[..., :T]`` (prefill of Mamba, of
  transformers' Qwen3.5 GatedDeltaNet): padding on both sides, the slice keeps the outputs that read
  only the left one;
- ``F.pad(x, (K - 1, 0))`` then a convolution without padding (a left ``constant_pad_nd`` of zeros);
- at decode, ``torch.cat([conv_state, x], -1)`` then a convolution without padding and ``[..., -T:]``:
  the state is the left context. When the state's update is its last S positions copied back
  (``state.copy_(xs[..., -S:])``, a graph input read by nothing else) the whole step becomes
  ``depthwise_conv1d_update(state, x, ..)``, one kernel that also writes the new state; else the
  update stays as it is;
- the SiLU recognised by what it computes (graph_utils.activation_after, shared with ``glu``):
  ``aten.silu``, ``y * sigmoid(y)``, its decomposition ``y / (1 + exp(-y))``, through a float32
  round trip of a bf16 / fp16 y, ...; fused when it is the only reader of the convolution's output.
Left alone, with the reason in the report: stride or dilation other than 1, groups other than the
channel count (not depthwise), a channel multiplier, padding whose right half reaches the kept
outputs (not causal), more than MAX_TAPS taps, a transposed convolution. The length may vary
between calls (a graph dynamic in it: SymInt bounds).

A graph walk (``GRAPH_WALK``): one anchor (the convolution) with three optional chains around it
(the pad before, the slice and a SiLU after, any pointwise spelling of it); as pattern-matcher
patterns that is one pattern per combination and spelling.
"""

from __future__ import annotations

import operator
import sys

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .. import conv1d as _op  # noqa: F401 -- defines torch.ops.inductor_fuse.depthwise_conv1d, emitted below
from .. import report
from ..conv1d import MAX_TAPS
from .graph_utils import activation_after, call, copy_meta, record_rewrite, val
from .registry import GRAPH_WALK, rule_family

FAMILY = "conv1d"
aten = torch.ops.aten


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_call(node: object, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _sym(v):
    """An int, or the SymInt an fx node computes."""
    return val(v) if isinstance(v, fx.Node) else v


def _unbatched(conv: fx.Node) -> fx.Node | None:
    """The squeeze(0) after the convolution of an unbatched [C, L] input (F.conv1d unsqueezes it to
    [1, C, L] and squeezes the result) when that is the convolution's only reader, else None."""
    s = _single_user(conv)
    return s if _is_call(s, aten.squeeze.dim) and s.args[1] == 0 else None


def _kept_slice(conv: fx.Node) -> tuple[fx.Node | None, object, object]:
    """(the slice node, start, end) when the convolution's only reader (through the squeeze of an
    unbatched input) is a step-1 slice of its last dimension, else (None, 0, None): all outputs.
    start, end as the slice has them: ints or fx nodes of SymInts (a length that varies between
    calls), negative ones counted from the end, end None for "to the end"."""
    out = _unbatched(conv) or conv
    s = _single_user(out)
    dims = (out.meta["val"].dim() - 1, -1)
    if _is_call(s, aten.slice.Tensor) and s.args[1] in dims and (len(s.args) < 5 or s.args[4] == 1):
        start = s.args[2] if len(s.args) > 2 and s.args[2] is not None else 0
        end = s.args[3] if len(s.args) > 3 else None
        if isinstance(end, int) and end >= sys.maxsize:  # a[..., -T:] in the graph: to the end
            end = None
        return s, start, end
    return None, 0, None


def _add(graph: fx.Graph, a, b):
    """a + b for ints or nodes of SymInts: an int when both are, else a node (its value recorded)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    node = graph.call_function(operator.add, (a, b))
    node.meta["val"] = _sym(a) + _sym(b)
    return node


def _neg(graph: fx.Graph, a):
    if isinstance(a, int):
        return -a
    node = graph.call_function(operator.neg, (a,))
    node.meta["val"] = -_sym(a)
    return node


def _state_update(src: fx.Node, conv: fx.Node) -> tuple[fx.Node, fx.Node, list[fx.Node]] | None:
    """The decode form's state update around a convolution over src = cat([state, x], -1):
    (state, x, the update's nodes) when cat's only other reader is its last S positions copied
    back into the state (a graph input, read by nothing else): slice -> copy -> copy_(state, ..).
    Else None (the convolution alone is rewritten; the update stays as it is)."""
    if not (_is_call(src, aten.cat.default) and len(src.args[0]) == 2):
        return None
    dim = src.args[1] if len(src.args) > 1 else 0
    if dim not in (2, -1):
        return None
    state, x = src.args[0]
    if state.op != "placeholder" or len(src.users) != 2 or conv not in src.users:
        return None
    sl = next(u for u in src.users if u is not conv)
    cp = _single_user(sl)
    cp_ = _single_user(cp) if cp is not None else None
    if not (
        _is_call(sl, aten.slice.Tensor)
        and sl.args[1] in (2, -1)
        and (len(sl.args) < 5 or sl.args[4] == 1)
        and (len(sl.args) < 4 or sl.args[3] is None or (isinstance(sl.args[3], int) and sl.args[3] >= sys.maxsize))
        and tuple(val(sl).shape) == tuple(val(state).shape)  # to the end, S long: the last S positions
        and _is_call(cp, aten.copy.default)
        and cp.args[0] is state
        and cp.args[1] is sl
        and _is_call(cp_, aten.copy_.default)
        and cp_.args[0] is state
        and cp_.args[1] is cp
        and not cp_.users
        and set(state.users) == {src, cp, cp_}
    ):
        return None
    return state, x, [cp_, cp, sl]


def _why_not(conv: fx.Node) -> str | None:
    x, w, _, stride, padding, dilation, transposed, _, groups = conv.args
    xv, wv = val(x), val(w)
    if xv.dim() != 3 or wv.dim() != 3:
        return f"not a 1-D convolution (input {xv.dim()}-D)"
    if transposed:
        return "a transposed convolution"
    if not all(isinstance(d, int) for d in wv.shape):
        return "symbolic weight shape"
    C, K = wv.shape[0], wv.shape[2]  # the channels from the (frozen) weight: x's may be symbolic
    if list(stride) != [1]:
        return f"stride {list(stride)}"
    if list(dilation) != [1]:
        return f"dilation {list(dilation)}"
    if wv.shape[1] != 1:  # in_channels / groups input channels per group
        return f"groups {groups} with {xv.shape[1]} channels: not depthwise"
    if not isinstance(groups, int):  # e.g. groups=x.shape[1] traced as a SymInt: no static C to check
        return "symbolic groups: the channel count is not known to equal the weight's"
    if groups != C:
        return f"{C} output channels from {groups}: a channel multiplier"
    if K > MAX_TAPS:
        return f"{K} taps: more than {MAX_TAPS} (a short convolution is what this rule is for)"
    return None


@rule_family(
    FAMILY,
    order=30,
    kind=GRAPH_WALK,  # one anchor, optional pad / slice / a SiLU (any spelling) around it
    doc="a depthwise causal conv1d (and the SiLU after it) becomes one Triton kernel",
)
def fuse_depthwise_conv1d(graph: fx.Graph) -> int:
    rep = report.current()
    rewrites = 0
    for conv in list(graph.find_nodes(op="call_function", target=aten.convolution.default)):
        why = _why_not(conv)
        if why is not None:
            rep.skipped.append(report.Skip(FAMILY, (conv.name,), why))
            continue
        x, w, b, _, padding, *_ = conv.args
        C, K, p = val(w).shape[0], val(w).shape[2], padding[0]
        src, pad = x, p
        pad_node = None
        if p == 0 and _is_call(x, aten.constant_pad_nd.default):  # F.pad(x, (left, 0)) before it
            amounts, value = x.args[1], (x.args[2] if len(x.args) > 2 else 0.0)
            if len(amounts) == 2 and amounts[1] == 0 and amounts[0] >= 0 and value == 0:
                pad_node, src, pad = x, x.args[0], amounts[0]
        upd = _state_update(src, conv) if pad == 0 else None  # (state, x, the update's nodes)
        L, n = val(src).shape[2], val(conv).shape[2]  # n = L + p + pad - K + 1
        sl, start, end = _kept_slice(conv)
        sv, ev = _sym(start), (n if end is None else _sym(end))
        from_end = [statically_known_true(v < 0) for v in (sv, ev)]  # a[-T:]: n - T
        sv, ev = (v + n if neg else v for v, neg in zip((sv, ev), from_end))
        if isinstance(ev, int) and isinstance(n, int):
            ev = min(ev, n)
        if not (statically_known_true(sv >= 0) and statically_known_true(sv <= ev) and statically_known_true(ev <= n)):
            rep.skipped.append(report.Skip(FAMILY, (conv.name,), f"slice bounds {sv}..{ev} not known to lie in 0..{n}"))
            continue
        # outputs start..end-1 read x padded by p on the left only if they stay clear of the right
        # padding: t + K - 1 < pad + L
        bound = pad + L - K + 1
        if not statically_known_true(ev <= bound):
            why = f"padding {list(padding)} on both sides, outputs kept up to {ev} > {bound}: not causal"
            rep.skipped.append(report.Skip(FAMILY, (conv.name,), why))
            continue
        squeeze = _unbatched(conv)
        last = sl if sl is not None else squeeze or conv
        act = activation_after(last)
        silu = act[1:] if act is not None and act[0] == "silu" else None  # (silu(last), its nodes)
        with graph.inserting_before(last):  # after the slice's bounds (nodes computed after the conv)
            wk = call(graph, aten.view.default, w, [C, K])
            if isinstance(n, int):
                n_node = n
            elif upd is not None:  # cat(state, x) goes away: its length from x's
                n_node = _add(graph, call(graph, aten.sym_size.int, upd[1], 2), val(upd[0]).shape[2] - K + 1)
            else:
                n_node = _add(graph, call(graph, aten.sym_size.int, src, 2), p + pad - K + 1)
            start_arg, end_arg = (
                _add(graph, n_node, v) if neg else v
                for v, neg in zip((start, n_node if end is None else end), from_end)
            )
            if isinstance(end_arg, int) and isinstance(n_node, int):
                end_arg = min(end_arg, n_node)
            length = _add(graph, end_arg, _neg(graph, start_arg))
            if upd is not None:  # the state read and updated in place by the same kernel
                op = torch.ops.inductor_fuse.depthwise_conv1d_update.default
                out = call(graph, op, upd[0], upd[1], wk, b, start_arg, length, silu is not None)
            else:
                op = torch.ops.inductor_fuse.depthwise_conv1d.default
                out = call(graph, op, src, wk, b, pad, start_arg, length, silu is not None)
        if squeeze is not None:  # back to the unbatched [C, length]
            with graph.inserting_before(last):
                out = call(graph, aten.squeeze.dim, out, 0)
        final = silu[0] if silu is not None else last
        copy_meta(final, out)
        final.replace_all_uses_with(out)
        update_nodes = upd[2] if upd is not None else []
        for dead in [*update_nodes, *(silu[1][::-1] if silu is not None else []), sl, squeeze, conv, pad_node]:
            if dead is not None and not dead.users:
                graph.erase_node(dead)
        if upd is not None and not src.users:
            graph.erase_node(src)
        detail = (
            f"x{list(val(src).shape)} {str(val(src).dtype).removeprefix('torch.')}, {K} taps, left pad {pad}, "
            f"outputs {sv}..{ev}{', SiLU' if silu is not None else ''}"
            f"{', state updated in place' if upd is not None else ''}"
        )
        record_rewrite(FAMILY, conv, detail)
        rewrites += 1
    return rewrites
