"""Tiny random decoder-only causal LMs of the installed `transformers`, built from a config alone.

FAMILIES is the sweep of tests/test_transformers_sweep.py: one entry per model family, each with
the number of sibling groups the `siblings` rule must find in the 2-layer model and where they are.
A "group" is one rewrite: N >= 2 linears reading one activation (q|k|v, gate|up, the 4-way
in_proj of a linear-attention layer, or all the input linears of a parallel attention+MLP block).
Families whose checkpoints already fuse those linears (Phi-3's qkv_proj / gate_up_proj,
GPT-NeoX's query_key_value) expect 0.

Nothing here touches the hub: models come from `AutoConfig.for_model(model_type, **kwargs)`
and `AutoModelForCausalLM.from_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn


class FamilyUnavailable(Exception):
    """The family cannot be built here: absent from this transformers, or a dependency missing."""


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # test id
    model_type: str  # key of transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    min_siblings: int  # sibling groups expected in the 2-layer model, at least
    where: str  # which linears form those groups
    extra: Callable[[int], dict] = lambda d: {}  # config overrides, given hidden size d
    fields: tuple[str, ...] = ()  # defaults of tiny_config the family's config does not take
    hidden: int = 64  # hidden size of the float variants (Q4_K variants use 256)


def _moe(d: int, experts: str = "num_experts") -> dict:
    # few small experts: the defaults (60-512 experts) would dominate the build time
    return {experts: 4, "num_experts_per_tok": 2, "moe_intermediate_size": d}


def _linear_attention(d: int) -> dict:
    # Gated DeltaNet layers (Qwen3-Next, Qwen3.5): small heads, one linear + one full layer
    return {
        "layer_types": ["linear_attention", "full_attention"],
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": d // 8,
        "linear_value_head_dim": d // 8,
    }


SEQUENTIAL = "per layer: (q,k,v) and (gate,up)"

# The brief's families first, then a few with a shape of their own (MLA's q_a|kv_a, OPT's k,v,q
# order, GLM-4's fused gate_up). Left out to keep the CPU sweep near 4 minutes, though they build
# from a tiny config: Llama-shaped clones (helium, olmo3, ernie4_5, hunyuan_v1_dense, seed_oss,
# ministral, cwm, exaone / internlm3, which map to LlamaForCausalLM) and families whose tiny
# configs need more work than they add (gemma3n_text, zamba2, dbrx, dots1, llama4_text).

FAMILIES: list[Family] = [
    Family("llama", "llama", 4, SEQUENTIAL),
    Family("mistral", "mistral", 4, SEQUENTIAL),
    Family("qwen2", "qwen2", 4, SEQUENTIAL + "; q/k/v with bias"),
    Family("qwen3", "qwen3", 4, SEQUENTIAL),
    Family(
        "qwen3_5",
        "qwen3_5_text",
        4,
        "layer 0 (in_proj_qkv,in_proj_z,in_proj_b,in_proj_a); layer 1 (q,k,v); per layer (gate,up)",
        _linear_attention,
        hidden=128,
    ),
    Family("gemma3", "gemma3_text", 4, SEQUENTIAL),
    Family("phi3", "phi3", 0, "none: qkv_proj and gate_up_proj are fused in the checkpoint"),
    Family("gemma", "gemma", 4, SEQUENTIAL),
    Family("gemma2", "gemma2", 4, SEQUENTIAL),
    Family(
        "phi",
        "phi",
        2,
        "per layer (q,k,v,fc1): parallel attention and MLP read one norm",
        fields=("num_key_value_heads", "head_dim"),
    ),
    Family("olmo", "olmo", 4, SEQUENTIAL),
    Family("olmo2", "olmo2", 4, SEQUENTIAL),
    Family("stablelm", "stablelm", 4, SEQUENTIAL),
    Family("granite", "granite", 4, SEQUENTIAL),
    Family("cohere", "cohere", 2, "per layer (q,k,v,gate,up): parallel attention and MLP read one norm"),
    Family(
        "gpt_neox",
        "gpt_neox",
        0,
        "none: query_key_value is fused, the MLP is not gated",
        fields=("num_key_value_heads", "head_dim"),
    ),
    Family(
        "mixtral", "mixtral", 2, "per layer (q,k,v); experts are not nn.Linear", lambda d: _moe(d, "num_local_experts")
    ),
    Family(
        "qwen2_moe",
        "qwen2_moe",
        4,
        "per layer (q,k,v) and (shared gate,up,shared_expert_gate[,router])",
        lambda d: {**_moe(d), "shared_expert_intermediate_size": 2 * d},
    ),
    Family("qwen3_moe", "qwen3_moe", 2, "per layer (q,k,v); the router is the only MLP linear", lambda d: _moe(d)),
    Family(
        "qwen3_next",
        "qwen3_next",
        4,
        "layer 0 (in_proj_qkvz,in_proj_ba); layer 1 (q,k,v); per layer (shared gate,up,shared_expert_gate[,router])",
        lambda d: {**_linear_attention(d), **_moe(d), "shared_expert_intermediate_size": 2 * d},
    ),
    Family(
        "falcon",
        "falcon",
        2,
        "per layer (query_key_value,dense_h_to_4h): parallel attention and MLP read one norm",
        fields=("num_key_value_heads", "head_dim", "intermediate_size"),
    ),
    Family(
        "gptj",
        "gptj",
        2,
        "per layer (q,k,v,fc_in): parallel attention and MLP read one norm",
        lambda d: {"rotary_dim": d // 8},
        fields=("num_key_value_heads", "head_dim", "intermediate_size"),
    ),
    Family("starcoder2", "starcoder2", 2, "per layer (q,k,v); the MLP is not gated"),
    Family("smollm3", "smollm3", 4, SEQUENTIAL),
    Family("exaone4", "exaone4", 4, SEQUENTIAL),
    Family("glm4", "glm4", 2, "per layer (q,k,v); gate_up_proj is fused in the checkpoint"),
    Family("nemotron", "nemotron", 2, "per layer (q,k,v); the MLP is not gated"),
    Family(
        "opt",
        "opt",
        2,
        "per layer (k,v,q); the MLP is not gated",
        lambda d: {"ffn_dim": 2 * d, "word_embed_proj_dim": d},
        fields=("num_key_value_heads", "head_dim", "intermediate_size"),
    ),
    Family(
        "gpt_neo",
        "gpt_neo",
        2,
        "per layer (q,k,v); the MLP is not gated",
        lambda d: {"attention_types": [[["global", "local"], 1]], "window_size": 4},
        fields=("num_key_value_heads", "head_dim"),
    ),
    Family(
        "deepseek_v3",
        "deepseek_v3",
        4,
        "per layer (q_a_proj,kv_a_proj_with_mqa); layer 0 dense (gate,up); layer 1 shared expert (gate,up)",
        lambda d: {
            **_moe(d, "n_routed_experts"),
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "n_group": 1,
            "topk_group": 1,
            "q_lora_rank": d // 2,
            "kv_lora_rank": d // 4,
            "qk_nope_head_dim": d // 8,
            "qk_rope_head_dim": d // 8,
            "v_head_dim": d // 4,
        },
        fields=("num_key_value_heads", "head_dim"),
    ),  # MLA: as many kv heads as query heads
]

FAMILY_NAMES = [f.name for f in FAMILIES]
assert len(set(FAMILY_NAMES)) == len(FAMILY_NAMES)

VOCAB = 512


def tiny_config(family: Family, hidden: int | None = None):
    """2 layers, GQA 4 query / 2 kv heads, MLP 2x hidden, vocab 512; the family's overrides on top."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    hidden = hidden or family.hidden
    if family.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise FamilyUnavailable(f"transformers has no causal LM for model_type {family.model_type!r}")
    kwargs = {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden // 4,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    for name in family.fields:
        del kwargs[name]
    kwargs.update(family.extra(hidden))
    try:
        return AutoConfig.for_model(family.model_type, **kwargs)
    except ImportError as e:
        raise FamilyUnavailable(f"{family.model_type}: {type(e).__name__}: {e}") from e


def build(
    family: Family,
    hidden: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    experts: str | None = None,
) -> nn.Module:
    """The family's tiny model with random weights (seeded), in eval mode; SDPA where supported.
    experts: the MoE experts implementation (transformers' `experts_implementation`; None: its default,
    grouped_mm where it can dispatch)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM

    config = tiny_config(family, hidden)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        attn = "sdpa" if model_class._supports_sdpa else "eager"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    except ImportError as e:  # an optional dependency of the modeling file
        raise FamilyUnavailable(f"{family.model_type}: {type(e).__name__}: {e}") from e
    _decisive_routers(model)
    if experts is not None and model.config._experts_implementation != experts:
        model.set_experts_implementation(experts)  # read by each experts module at call time
    return model.to(device).eval()


ROUTER_SCALE = 1000.0


def _decisive_routers(model: nn.Module) -> None:
    """A randomly initialised MoE router scores all experts nearly alike, so the rounding
    difference between eager and compiled bf16 flips the top-k choice of near-tie tokens and whole
    rows of logits differ. Measured on an H200 (Mixtral, hidden 256, bf16): compiled vs eager
    rel. err 0.72 with no quantization and no rule involved, 1.2 with Q4_K; with fp32, 1e-3. A
    trained router is decisive; scaling the random one by 1000 makes it so (Q4_K bf16: 1.2e-2),
    and the comparison then tests the compiler, not the tie-break."""
    n_experts = getattr(model.config, "num_local_experts", None) or getattr(model.config, "num_experts", None)
    scaled = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            # transformers 5.24 has a MixtralTopKRouter; older versions an nn.Linear called "gate"
            router = type(module).__name__.endswith("Router") or (
                name.rsplit(".", 1)[-1] in ("gate", "router")
                and isinstance(getattr(module, "weight", None), torch.Tensor)
                and module.weight.dim() == 2
                and module.weight.shape[0] == n_experts
            )
            if router:
                module.weight.mul_(ROUTER_SCALE)
                scaled += 1
    if n_experts and not scaled:
        raise AssertionError(f"{type(model).__name__}: an MoE model whose router was not found to scale")


def input_ids(batch: int = 1, seq: int = 8, device: str = "cpu") -> torch.Tensor:
    # ids >= 3: 0, 1, 2 are pad, bos, eos
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
