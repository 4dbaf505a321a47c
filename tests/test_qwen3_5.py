"""transformers' Qwen3.5 (GatedDeltaNet linear attention + full attention), unmodified.

Regression: the sibling rewrite handed in_proj_z's consumer a slice of the fused output, and the
consumer's view (tokens and heads flattened together) failed with BackendCompilerFailed "Cannot
view a tensor with shape [1, 12, 4, 32] and strides (4704, 392, 32, 1) as a tensor with shape
(48, 32)".

``dynamic=False``, as in tests/test_transformers_sweep.py (its docstring says why): the sweep runs
this forward at another length in the same worker.
"""

import pytest
import torch
from numerics import rel_err

import inductor_fuse

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Qwen3_5ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no Qwen3.5", allow_module_level=True)


def tiny_qwen3_5(seed: int = 0):
    cfg = transformers.Qwen3_5TextConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=256,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
    )
    torch.manual_seed(seed)
    return transformers.Qwen3_5ForCausalLM(cfg).eval()


def test_compiles_fuses_and_matches_eager():
    model = tiny_qwen3_5()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    n_reports = len(inductor_fuse.all_reports())
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        out = torch.compile(model, backend="inductor_fuse", dynamic=False)(ids, use_cache=False).logits
    assert rel_err(out, ref) < 1e-4
    reports = inductor_fuse.all_reports()[n_reports:]
    assert not any(r.failures for r in reports), [str(r) for r in reports]
    labels = [rw.label for r in reports for rw in r.rewrites]
    # linear-attention layer: the 4-way input projection; full-attention layer: q/k/v; both: gate/up
    assert labels.count("(in_proj_qkv,in_proj_z,in_proj_b,in_proj_a)") == 1, labels
    assert labels.count("(q_proj,k_proj,v_proj)") == 1, labels
    assert labels.count("(gate_proj,up_proj)") == 2, labels
    # the GatedDeltaNet layer's causal depthwise conv + SiLU (transformers' torch fallback spelling)
    assert sum(r.counts["conv1d"] for r in reports) == 1, [str(r) for r in reports]


def test_decode_step_with_the_conv_state():
    """One decode step after an eager prefill: transformers' causal_conv1d_update fallback (the conv
    state concatenated with the new token, a conv without padding, the state updated in place)
    becomes depthwise_conv1d_update (the state written by the same kernel); logits and the updated
    state match eager."""
    import copy

    model = tiny_qwen3_5()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    n_reports = len(inductor_fuse.all_reports())
    with torch.no_grad():
        out = model(ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        cache_eager, cache_compiled = out.past_key_values, copy.deepcopy(out.past_key_values)
        ref = model(nxt, past_key_values=cache_eager, use_cache=True).logits
        compiled = torch.compile(model, backend="inductor_fuse", dynamic=False)
        got = compiled(nxt, past_key_values=cache_compiled, use_cache=True).logits
    assert rel_err(got, ref) < 1e-4
    reports = inductor_fuse.all_reports()[n_reports:]
    assert sum(r.counts["conv1d"] for r in reports) == 1, [str(r) for r in reports]
    assert any("state updated in place" in rw.detail for r in reports for rw in r.rewrites), [str(r) for r in reports]

    def conv_states(cache):  # every conv-state tensor of the cache's linear-attention layers
        found = []
        for layer in cache.layers:
            st = getattr(layer, "conv_states", None)
            found += list(st.values()) if isinstance(st, dict) else [st] if isinstance(st, torch.Tensor) else []
        return found

    states = list(zip(conv_states(cache_eager), conv_states(cache_compiled)))
    assert states, "no conv state in the cache"
    assert all(rel_err(b, a) < 1e-6 for a, b in states)
