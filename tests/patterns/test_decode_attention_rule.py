"""Rule family `decode_attention`: SDPA of a few query rows over a masked static KV cache becomes
torch.ops.inductor_fuse.decode_attention, on the project's Transformer and on a transformers
model with a StaticCache. Compiled the way users compile (no Dynamo reset); each test compares
against the same model run eagerly."""

import dataclasses
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err

import inductor_fuse

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from test_transformer import FAMILIES, build  # noqa: E402

FAMILY = "decode_attention"


def _decode(model, compiled, tokens, start, steps):
    """Prefill tokens[:, :start] eagerly, then `steps` single-token steps through `compiled`."""
    with torch.no_grad():
        model(tokens[:, :start], torch.arange(start))
        return torch.cat([compiled(tokens[:, i : i + 1], torch.tensor([i])) for i in range(start, start + steps)], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_fires_in_every_layer_and_matches_eager(family):
    """llama (GQA 2), gemma3 (sliding-window layers, GQA 2), qwen2 (one KV head)."""
    args = FAMILIES[family]
    tokens = torch.randint(0, args.vocab_size, (1, 14), generator=torch.Generator().manual_seed(3))
    eager, model = build(args, max_seq_len=40), build(args, max_seq_len=40)
    ref = _decode(eager, eager, tokens, 6, 6)
    got = _decode(model, torch.compile(model, backend="inductor_fuse"), tokens, 6, 6)
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == args.n_layers, str(rep)
    rewrite = next(r for r in rep.rewrites if r.family == FAMILY)
    assert f"over k[1, {args.n_kv_heads}, 40, {args.head_dim}]" in rewrite.detail


def test_prefill_keeps_the_stock_path():
    args = FAMILIES["llama"]
    model = build(args, max_seq_len=40)
    tokens = torch.randint(0, args.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = build(args, max_seq_len=40)(tokens, torch.arange(20))
        got = torch.compile(model, backend="inductor_fuse")(tokens, torch.arange(20))
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == 0
    # "20 query rows (prefill)"; or, once Dynamo has seen this forward() at other lengths (earlier
    # tests), a graph dynamic in the length: "symbolic query or cache length"
    reasons = [s.reason for s in rep.skipped if s.family == FAMILY]
    assert reasons and all("(prefill)" in r or "symbolic" in r for r in reasons), str(rep)


def test_the_option_turns_it_off():
    args = FAMILIES["llama"]
    eager, model = build(args, max_seq_len=40), build(args, max_seq_len=40)
    tokens = torch.randint(0, args.vocab_size, (1, 8), generator=torch.Generator().manual_seed(5))
    ref = _decode(eager, eager, tokens, 6, 1)
    got = _decode(model, torch.compile(model, backend="inductor_fuse", options={FAMILY: False}), tokens, 6, 1)
    assert inductor_fuse.last_report().counts[FAMILY] == 0
    assert rel_err(got, ref) < 1e-5


class _Attend(nn.Module):
    """One SDPA call over a cache buffer, with the mask given as `kind`."""

    def __init__(self, kind: str, T: int = 64, hq: int = 4, hkv: int = 2, d: int = 16, dtype=torch.float32):
        super().__init__()
        self.kind = kind
        g = torch.Generator().manual_seed(6)
        self.register_buffer("k", torch.randn(1, hkv, T, d, generator=g).to(dtype))
        self.register_buffer("v", torch.randn(1, hkv, T, d, generator=g).to(dtype))
        self.rep = hq // hkv

    def forward(self, q, live):
        # [1, 1, 1, T] bool; live [S], one length per query row: [1, 1, S, T]
        mask = (torch.arange(self.k.shape[2]) < (live[:, None] if live.dim() else live))[None, None]
        mask = mask if live.dim() else mask[None]
        k, v = self.k, self.v
        if self.kind == "float bias":
            bias = torch.zeros(mask.shape).masked_fill(~mask, -1e4)  # finite: not where(mask, 0, -inf)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        fill = {"cuda bias": -65504.0, "-inf": float("-inf"), "finfo.min": torch.finfo(q.dtype).min}
        if self.kind in fill:  # "cuda bias": what SDPA's CUDA backends make of a boolean mask
            bias = torch.where(mask, torch.zeros((), dtype=q.dtype), torch.full((), fill[self.kind], dtype=q.dtype))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        if self.kind == "repeat_kv":  # how models without native GQA hand SDPA their cache
            k = k[:, :, None].expand(-1, -1, self.rep, -1, -1).reshape(1, -1, *k.shape[2:])
            v = v[:, :, None].expand(-1, -1, self.rep, -1, -1).reshape(1, -1, *v.shape[2:])
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.kind == "no mask":
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize(
    "kind, dtype, fires, reason",
    [
        ("bool", torch.float32, True, None),
        ("repeat_kv", torch.float32, True, None),
        ("-inf", torch.float32, True, None),
        ("cuda bias", torch.bfloat16, True, None),
        ("cuda bias", torch.float32, False, "only a half-precision graph can take it"),
        ("finfo.min", torch.bfloat16, False, "average V over the whole buffer"),
        ("float bias", torch.float32, False, "float bias"),
        ("no mask", torch.float32, False, "no mask"),
    ],
)
def test_which_masks_say_what_is_live(kind, dtype, fires, reason):
    model = _Attend(kind, dtype=dtype).eval()
    q = torch.randn(1, 4, 1, 16, generator=torch.Generator().manual_seed(7)).to(dtype)
    live = torch.tensor(37)
    with torch.no_grad():
        ref = model(q, live)
        got = torch.compile(model, backend="inductor_fuse")(q, live)
    assert rel_err(got, ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == int(fires), str(rep)
    if fires:
        assert "over k[1, 2, 64, 16]" in rep.rewrites[0].detail  # the KV heads before repeat_kv
    else:
        assert any(s.family == FAMILY and reason in s.reason for s in rep.skipped), str(rep)


@pytest.mark.parametrize(
    "kind, dtype, fires",
    [
        ("bool", torch.float32, True),
        ("-inf", torch.float32, True),
        ("cuda bias", torch.bfloat16, True),
        ("finfo.min", torch.float32, False),
        ("finfo.min", torch.bfloat16, False),
    ],
)
def test_a_row_that_attends_nowhere_gets_what_sdpa_gives(kind, dtype, fires):
    """Query rows 0 and 2 of 3 see no live position (a left-padded prompt's padding rows). SDPA gives
    such a row 0 with a boolean mask or a -inf fill (this torch's CPU backend; the op's definition),
    with a finite fill the softmax over the whole buffer (-65504, the CUDA backends' fill: the
    rule makes the row attend everywhere) or, when the fill swallows the scores (finfo.min), the mean
    of V (the rule does not fire). Either way the compiled model gives what eager gives."""
    model = _Attend(kind, dtype=dtype).eval()
    q = torch.randn(1, 4, 3, 16, generator=torch.Generator().manual_seed(7)).to(dtype)
    live = torch.tensor([0, 37, 0])

    def attend(q, live):  # a frame of its own: _Attend.forward's compiles stay under the recompile limit
        return model(q, live)

    with torch.no_grad():
        ref = model(q, live)
        got = torch.compile(attend, backend="inductor_fuse")(q, live)
    assert torch.isfinite(ref).all() and torch.isfinite(got).all()
    if kind in ("bool", "-inf"):
        assert ref[:, :, 0].abs().max() == 0 and ref[:, :, 2].abs().max() == 0
    else:
        assert ref[:, :, 0].abs().max() > 0.01  # not zeros: the case this test is about
    for row in range(3):
        assert rel_err(got[:, :, row], ref[:, :, row]) < (1e-5 if dtype == torch.float32 else 1e-2), row
    assert inductor_fuse.last_report().counts[FAMILY] == int(fires), str(inductor_fuse.last_report())


def test_a_finite_fill_mask_is_widened_once_for_all_its_layers(monkeypatch):
    """Two attentions (two layers) over one mask with the CUDA backends' fill: one
    mask | ~mask.any(-1) in the graph, read by both, not one per layer."""
    from inductor_fuse.patterns import decode_attention as rule

    made = []
    widen = rule._attend_everywhere
    monkeypatch.setattr(rule, "_attend_everywhere", lambda graph, mask: made.append(mask) or widen(graph, mask))
    k = torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(3)).bfloat16()

    def two_layers(q, live):
        mask = (torch.arange(64) < live)[None, None, None]
        bias = torch.where(mask, torch.zeros((), dtype=q.dtype), torch.full((), -65504.0, dtype=q.dtype))
        h = F.scaled_dot_product_attention(q, k, k, attn_mask=bias, enable_gqa=True)
        return F.scaled_dot_product_attention(h, k, k, attn_mask=bias, enable_gqa=True)

    q = torch.randn(1, 4, 1, 16, generator=torch.Generator().manual_seed(4)).bfloat16()
    with torch.no_grad():
        ref = two_layers(q, torch.tensor(37))
        got = torch.compile(two_layers, backend="inductor_fuse")(q, torch.tensor(37))
    assert rel_err(got, ref) < 1e-2
    assert inductor_fuse.last_report().counts[FAMILY] == 2
    assert len(made) == 1


def test_transformers_static_cache():
    """An unmodified transformers Llama decoding into a StaticCache: the rule fires in each layer."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run(step):
        cache = transformers.StaticCache(config=cfg, max_cache_len=48)
        ids = torch.randint(0, 101, (1, 8), generator=torch.Generator().manual_seed(1))
        logits = []
        with torch.no_grad():
            tok = model(ids, cache_position=torch.arange(8), **{cache_kw: cache}).logits[:, -1:].argmax(-1)
            for i in range(8, 12):
                out = step(tok, cache_position=torch.tensor([i]), **{cache_kw: cache}).logits
                logits.append(out)
                tok = out[:, -1:].argmax(-1)
        return torch.cat(logits, 1)

    ref = run(model)
    got = run(torch.compile(model, backend="inductor_fuse"))
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == cfg.num_hidden_layers, str(rep)


def test_sliding_window_model_sees_only_its_window():
    """gemma3 with every layer sliding (window 3): with the cache before the window overwritten by
    garbage (inf keys, NaN values), the compiled step still equals eager on a clean cache: the
    mask, not the buffer, decides what is read."""
    args = dataclasses.replace(FAMILIES["gemma3"], n_layers=2, sliding_window_pattern=7)
    tokens = torch.randint(0, args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(8))
    eager, model = build(args, max_seq_len=32), build(args, max_seq_len=32)
    compiled = torch.compile(model, backend="inductor_fuse")
    with torch.no_grad():
        for m in (eager, model):
            m(tokens[:, :8], torch.arange(8))
        for layer in model.layers:  # positions 0..3: outside the window of every position >= 6
            layer.attention.kv_cache.k_cache[:, :, :4] = float("inf")
            layer.attention.kv_cache.v_cache[:, :, :4] = float("nan")
        ref = torch.cat([eager(tokens[:, i : i + 1], torch.tensor([i])) for i in range(8, 12)], 1)
        got = torch.cat([compiled(tokens[:, i : i + 1], torch.tensor([i])) for i in range(8, 12)], 1)
    assert torch.isfinite(got).all()
    assert rel_err(got, ref) < 1e-5
    assert inductor_fuse.last_report().counts[FAMILY] == 2
