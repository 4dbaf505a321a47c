"""Rule family `rope_cache`: at decode, the QK-norm, the rope on q and k and the KV-cache write in
front of each decode attention become torch.ops.inductor_fuse.rope_cache_write, which writes the
cache in place. Compiled the way users compile (no Dynamo reset); compared with the same model
run eagerly: the tokens, and the cache the step wrote."""

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err
from torch._inductor.utils import run_and_get_code

import inductor_fuse
from inductor_fuse.models.transformer import KVCache, RMSNorm, apply_rope, rope_table

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from test_transformer import FAMILIES, build  # noqa: E402

FAMILY = "rope_cache"
QWEN3 = dataclasses.replace(FAMILIES["llama"], qk_norm=True)  # QK-norm, no sandwich norms
MODELS = {**FAMILIES, "qwen3": QWEN3}


def _steps(model, step, tokens, start, n):
    """Prefill tokens[:, :start] eagerly, then n one-token steps through `step`; the tokens' logits."""
    with torch.no_grad():
        model(tokens[:, :start], torch.arange(start))
        return torch.cat([step(tokens[:, i : i + 1], torch.tensor([i])) for i in range(start, start + n)], 1)


def _caches(model):
    return torch.stack([layer.attention.kv_cache.kv for layer in model.layers])


# the op itself on CPU: dequant_cpu off (with it on, the op goes back to aten ops on CPU)
OP_ON_CPU = {"dequant_cpu": False}


@pytest.mark.parametrize(
    "family, options",
    [(f, OP_ON_CPU) for f in MODELS] + [("llama", None), ("gemma3", None)],
    ids=[f"{f}-op" for f in MODELS] + ["llama-dequant_cpu", "gemma3-dequant_cpu"],
)
def test_fires_in_every_layer_and_matches_eager(family, options):
    """llama (GQA 2, no QK-norm), gemma3 (QK-norm, sliding-window layers with their own rope),
    qwen2 (one KV head, q/k/v bias), qwen3 (QK-norm)."""
    args = MODELS[family]
    tokens = torch.randint(0, args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(5))
    eager, model = build(args, max_seq_len=32), build(args, max_seq_len=32)
    ref = _steps(eager, eager, tokens, 5, 5)
    got = _steps(model, torch.compile(model, backend="inductor_fuse", options=options), tokens, 5, 5)
    assert rel_err(got, ref) < 1e-5
    assert rel_err(_caches(model), _caches(eager)) < 1e-6
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == args.n_layers, str(rep)
    detail = next(r.detail for r in rep.rewrites if r.family == FAMILY)
    assert ("QK-norm eps" in detail) == args.qk_norm, detail


@pytest.mark.parametrize("options", [OP_ON_CPU, None], ids=["op", "dequant_cpu"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_cache_is_written_in_place(family, options):
    """One rope_cache_write per layer in the compiled code, on the cache buffer itself: no clone of
    the cache, no copy back (Inductor's reinplacing pass took the auto_functionalized op in place).
    With dequant_cpu (on CPU): no op, Inductor's own kernels write the cache, still in place."""
    from inductor_fuse.models.generate import decode_one_token

    args = FAMILIES[family]
    model = build(args, max_seq_len=32)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), torch.arange(3))
        step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True, options=options)
        _, (code, *_) = run_and_get_code(step, model, torch.tensor([[4]]), torch.tensor([3]))
    assert inductor_fuse.last_report().counts[FAMILY] == args.n_layers
    calls = code.count("torch.ops.inductor_fuse.rope_cache_write.default(")
    assert calls == (args.n_layers if options else 0)
    assert not re.search(r"\.copy_\(|clone", code)


def test_bfloat16_gemma_matches_eager():
    args = FAMILIES["gemma3"]
    tokens = torch.randint(0, args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(6))
    eager, model = build(args, max_seq_len=32).bfloat16(), build(args, max_seq_len=32).bfloat16()
    for m in (eager, model):
        m.setup_caches(1, 32)
    ref = _steps(eager, eager, tokens, 5, 5)
    got = _steps(model, torch.compile(model, backend="inductor_fuse", options=OP_ON_CPU), tokens, 5, 5)
    assert rel_err(got, ref) < 2e-2  # bf16: the compiled graph rounds elsewhere than eager
    assert rel_err(_caches(model), _caches(eager)) < 2e-2
    assert inductor_fuse.last_report().counts[FAMILY] == args.n_layers


def test_needs_the_decode_attention_rule():
    args = FAMILIES["llama"]
    model = build(args, max_seq_len=32)
    tokens = torch.randint(0, args.vocab_size, (1, 8), generator=torch.Generator().manual_seed(7))
    eager = build(args, max_seq_len=32)
    ref = _steps(eager, eager, tokens, 5, 2)
    compiled = torch.compile(model, backend="inductor_fuse", options={"decode_attention": False})
    assert rel_err(_steps(model, compiled, tokens, 5, 2), ref) < 1e-5
    assert inductor_fuse.last_report().counts[FAMILY] == 0


class _Attention(nn.Module):
    """models/transformer.py's attention over its KV cache, with the roped key also read elsewhere
    (leak), the key's norm left out (half_norm) or its weight in bfloat16 (mixed_w)."""

    def __init__(self, leak=False, half_norm=False, mixed_w=False, H=4, Hkv=2, D=16, T=32):
        super().__init__()
        self.H, self.Hkv, self.D, self.leak, self.half_norm = H, Hkv, D, leak, half_norm
        self.wq, self.wk, self.wv = nn.Linear(64, H * D), nn.Linear(64, Hkv * D), nn.Linear(64, Hkv * D)
        self.q_norm, self.k_norm = RMSNorm(D), RMSNorm(D).to(torch.bfloat16 if mixed_w else torch.float32)
        self.cache = KVCache(1, Hkv, T, D, torch.float32, "cpu")
        self.register_buffer("rope", rope_table(D, 10000.0, 1.0, None, T, "cpu"))
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril())

    def forward(self, x, pos):
        B, S, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, S, self.H, self.D))
        k = self.wk(x).view(B, S, self.Hkv, self.D)
        k = k if self.half_norm else self.k_norm(k)
        v = self.wv(x).view(B, S, self.Hkv, self.D)
        rope = self.rope[pos]
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        kc, vc = self.cache.update(pos, k.transpose(1, 2), v.transpose(1, 2))
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), kc, vc, attn_mask=self.causal[None, None, pos], enable_gqa=True
        )
        y = y.transpose(1, 2).reshape(B, S, -1)
        return y + k.sum() if self.leak else y


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"leak": True}, "also read elsewhere than the cache write"),
        ({"half_norm": True}, "a norm on only one of the query and the key"),
        ({"mixed_w": True}, "not both in q's dtype or both float32"),
    ],
)
def test_left_alone_with_the_reason(kw, reason):
    torch.manual_seed(0)
    eager = _Attention(**kw).eval()
    model = _Attention(**kw).eval()
    model.load_state_dict(eager.state_dict())
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        ref = eager(x, torch.tensor([3]))
        got = torch.compile(model, backend="inductor_fuse")(x, torch.tensor([3]))
    assert rel_err(got, ref) < 1e-5
    assert rel_err(model.cache.kv, eager.cache.kv) < 1e-6
    rep = inductor_fuse.last_report()
    assert rep.counts["decode_attention"] == 1 and rep.counts[FAMILY] == 0, str(rep)
    assert any(s.family == FAMILY and reason in s.reason for s in rep.skipped), str(rep)
