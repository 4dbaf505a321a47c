"""Small GGUF files written the way llama.cpp's converter writes them, for loader tests.

    hf_weights, config = write_tiny_gguf(path, "llama")

Random float weights in Hugging Face layout are quantized with the project's quantizers and
written with gguf.GGUFWriter under llama.cpp's tensor names, with its transforms (llama q/k rows
permuted for the interleaved rope; Gemma norms stored as w + 1). Returned: the dequantized
weights in HF layout (the float reference model's state dict) and the HF config kwargs.
Also writes a byte-level BPE tokenizer trained on a small corpus (`train_bpe`).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import dequantize as gguf_dequantize

from inductor_fuse.quant import FORMATS as PROJECT_FORMATS
from inductor_fuse.quant import quantize

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "Once upon a time, there was a little model that learned to speak.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Les élèves étudient à l'école; où est la bibliothèque? Ça va très bien, merci.",
    "Numbers: 12345 678 90, 3.14159, 2026-11-21. Emoji: 😀 🚀 ✨",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "   leading spaces, trailing spaces   \n\n\nnew lines\ttabs",
    "I'm sure they'll say it's what we've done, isn't it?",
] * 4

# Families: HF config kwargs builder, special tokens, tokenizer pre name.
SPECIALS = {
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gemma3": ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_turn>"],
    "phi3": ["<s>", "</s>", "<|end|>"],
}
PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "gemma3": "llama-bpe", "phi3": "llama-bpe"}

# Default weight formats per family: a mix of every GGUF format, and dense ones.
FORMATS = {
    "llama": dict(
        q="q4_k", k="q4_k", v="q6_k", o="q4_k", gate="q4_k", up="q4_k", down="q6_k", embd="q8_0", output="q6_k"
    ),
    "qwen2": dict(
        q="q5_0", k="q5_0", v="q8_0", o="q4_1", gate="q4_k", up="q5_0", down="q6_k", embd="q4_k", output="f16"
    ),
    "qwen3": dict(
        q="q4_k", k="q5_k", v="iq4_nl", o="q5_0", gate="q4_k", up="q4_k", down="q6_k", embd="q8_0", output=None
    ),
    "gemma3": dict(
        q="q5_0", k="q5_0", v="q8_0", o="q4_k", gate="q5_0", up="q5_0", down="q5_1", embd="q8_0", output=None
    ),
    # phi3 stores q|k|v and gate|up fused: "q" is attn_qkv's format, "up" ffn_up's (k, v, gate unused)
    "phi3": dict(q="q4_k", k=None, v=None, o="q4_k", gate=None, up="q4_k", down="q6_k", embd="q8_0", output="q6_k"),
}


def train_bpe(arch: str, vocab_size: int = 400):
    """A byte-level BPE trained on CORPUS with the family's pre-tokenizer regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=PRE[arch] == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT if PRE[arch] == "llama-bpe" else QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS[arch],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute (rows of q or k, HF -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: torch.Tensor, fmt: str | None, permute_heads: int | None = None):
    """(array to write, raw_dtype, HF-layout float32 reference)."""
    if fmt in (None, "f32", "f16"):
        dtype = np.float16 if fmt == "f16" else np.float32
        arr = w.numpy().astype(dtype)
        ref = torch.from_numpy(arr.astype(np.float32))
        if permute_heads:
            arr = _permute(arr, permute_heads)
        return arr, None, ref
    if fmt not in PROJECT_FORMATS:  # a ggml type the project does not support: random bytes of the right size
        ggml_type = GGMLQuantizationType[fmt.upper()]
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        raw = np.random.default_rng(0).integers(0, 256, (w.shape[0], w.shape[1] // block * type_size), dtype=np.uint8)
        return raw, ggml_type, None
    hf_bytes = quantize(w, fmt).to_gguf_bytes().numpy()
    # the reference weights from gguf's own dequantizer of the bytes written (independent of the
    # project's dequantize, which the loaded model runs), in the HF row order
    ggml_type = GGMLQuantizationType[fmt.upper()]
    ref = torch.from_numpy(gguf_dequantize(hf_bytes, ggml_type).astype(np.float32))
    # rows are independent: permuting bytes = permuting weights (_permute returns a new array)
    raw = _permute(hf_bytes, permute_heads) if permute_heads else hf_bytes
    return raw, ggml_type, ref.reshape(w.shape)


def write_tiny_gguf(
    path,
    arch: str,
    *,
    dim: int = 256,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 64,
    ffn: int = 512,
    sliding_window: int = 4,
    formats: dict | None = None,
    seed: int = 0,
    tokenizer=None,
    arch_name: str | None = None,
    skip: tuple[str, ...] = (),
    extra: dict | None = None,
    extra_kv: dict | None = None,
):
    """Write a tiny `arch` model; returns (hf_state_dict, hf_config_kwargs, tokenizer).

    formats: overrides of FORMATS[arch] (a ggml type name the project lacks, e.g. "q2_k", writes
    random bytes); arch_name: the general.architecture written; skip: tensor names left out; extra:
    more float32 tensors to write, name -> array; extra_kv: more metadata, key -> value (an int is
    written as uint32, a float as float32, a str as a string)."""
    g = torch.Generator().manual_seed(seed)
    fmts = dict(FORMATS[arch], **(formats or {}))
    tok = tokenizer or train_bpe(arch)
    vocab = tok.get_vocab_size()
    eps = 1e-6
    rope_base = 1000000.0 if arch != "llama" else 500000.0
    gemma = arch == "gemma3"
    if gemma:
        n_layers = max(n_layers, 6)  # one global layer in six

    w = GGUFWriter(path, arch_name or arch)
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_base)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if gemma:
        w.add_sliding_window(sliding_window)
    for key, value in (extra_kv or {}).items():
        add = {float: w.add_float32, str: w.add_string}.get(type(value), w.add_uint32)
        add(key, value)
    _write_tokenizer(w, tok, arch)

    sd = {}

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def linear(name, hf_name, n, k, fmt, permute_heads=None, bias=False):
        arr, raw_dtype, ref = _encode(rand(n, k, std=k**-0.5), fmt, permute_heads)
        if f"{name}.weight" not in skip:
            w.add_tensor(f"{name}.weight", arr, raw_dtype=raw_dtype)
        sd[f"{hf_name}.weight"] = ref
        if bias:
            b = rand(n, std=0.1)
            w.add_tensor(f"{name}.bias", b.numpy())
            sd[f"{hf_name}.bias"] = b

    def norm(name, hf_name, n):
        v = 1.0 + rand(n, std=0.2)
        # Gemma's norm multiplies by (1 + w): the converter stores w + 1, HF keeps w.
        w.add_tensor(f"{name}.weight", v.numpy())
        sd[f"{hf_name}.weight"] = v - 1.0 if gemma else v

    embd, raw_dtype, ref = _encode(rand(vocab, dim), fmts["embd"])
    w.add_tensor("token_embd.weight", embd, raw_dtype=raw_dtype)
    sd["model.embed_tokens.weight"] = ref
    permute = arch == "llama"
    for i in range(n_layers):
        b, hf = f"blk.{i}", f"model.layers.{i}"
        norm(f"{b}.attn_norm", f"{hf}.input_layernorm", dim)
        if arch == "phi3":  # fused q|k|v and gate|up, as its checkpoints and llama.cpp store them
            linear(f"{b}.attn_qkv", f"{hf}.self_attn.qkv_proj", (n_heads + 2 * n_kv_heads) * head_dim, dim, fmts["q"])
            linear(f"{b}.attn_output", f"{hf}.self_attn.o_proj", dim, n_heads * head_dim, fmts["o"])
            norm(f"{b}.ffn_norm", f"{hf}.post_attention_layernorm", dim)
            linear(f"{b}.ffn_up", f"{hf}.mlp.gate_up_proj", 2 * ffn, dim, fmts["up"])
            linear(f"{b}.ffn_down", f"{hf}.mlp.down_proj", dim, ffn, fmts["down"])
            continue
        linear(
            f"{b}.attn_q",
            f"{hf}.self_attn.q_proj",
            n_heads * head_dim,
            dim,
            fmts["q"],
            n_heads if permute else None,
            arch == "qwen2",
        )
        linear(
            f"{b}.attn_k",
            f"{hf}.self_attn.k_proj",
            n_kv_heads * head_dim,
            dim,
            fmts["k"],
            n_kv_heads if permute else None,
            arch == "qwen2",
        )
        linear(f"{b}.attn_v", f"{hf}.self_attn.v_proj", n_kv_heads * head_dim, dim, fmts["v"], None, arch == "qwen2")
        linear(f"{b}.attn_output", f"{hf}.self_attn.o_proj", dim, n_heads * head_dim, fmts["o"])
        if arch in ("qwen3", "gemma3"):
            norm(f"{b}.attn_q_norm", f"{hf}.self_attn.q_norm", head_dim)
            norm(f"{b}.attn_k_norm", f"{hf}.self_attn.k_norm", head_dim)
        if gemma:
            norm(f"{b}.post_attention_norm", f"{hf}.post_attention_layernorm", dim)
            norm(f"{b}.ffn_norm", f"{hf}.pre_feedforward_layernorm", dim)
            norm(f"{b}.post_ffw_norm", f"{hf}.post_feedforward_layernorm", dim)
        else:
            norm(f"{b}.ffn_norm", f"{hf}.post_attention_layernorm", dim)
        linear(f"{b}.ffn_gate", f"{hf}.mlp.gate_proj", ffn, dim, fmts["gate"])
        linear(f"{b}.ffn_up", f"{hf}.mlp.up_proj", ffn, dim, fmts["up"])
        linear(f"{b}.ffn_down", f"{hf}.mlp.down_proj", dim, ffn, fmts["down"])
    norm("output_norm", "model.norm", dim)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    if fmts["output"] is not None:
        linear("output", "lm_head", vocab, dim, fmts["output"])
    else:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    config = dict(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=eps,
        max_position_embeddings=2048,
        tie_word_embeddings=fmts["output"] is None,
    )
    if gemma:
        config.update(
            sliding_window=sliding_window,
            query_pre_attn_scalar=head_dim,
            hidden_activation="gelu_pytorch_tanh",
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": rope_base},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        )
    else:
        config.update(rope_parameters={"rope_type": "default", "rope_theta": rope_base})
    if arch == "phi3":  # Phi3Config's defaults: pad id 32000 (beyond this vocabulary), a 2047 sliding window
        config.update(pad_token_id=None, bos_token_id=None, eos_token_id=None, sliding_window=None)
    return sd, config, tok


def _write_tokenizer(w: GGUFWriter, tok, arch: str) -> None:
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = set(SPECIALS[arch])
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE[arch])
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    first, second, third = (vocab[s] for s in SPECIALS[arch])
    if arch in ("qwen2", "qwen3"):
        w.add_bos_token_id(first)
        w.add_eos_token_id(first)
        w.add_eot_token_id(third)
        w.add_add_bos_token(False)
    else:
        w.add_bos_token_id(first)
        w.add_eos_token_id(second)
        w.add_eot_token_id(third)
        w.add_add_bos_token(True)


def hf_reference(arch: str, state_dict: dict, config: dict):
    """The transformers float32 model for the same weights (the oracle)."""
    import transformers

    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
    }[arch]
    cfg = cls[0](**config)
    cfg._attn_implementation = "eager"
    model = cls[1](cfg).eval()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if "rotary" not in m and not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def write_spm_gguf(path, vocab_size: int = 300, add_space_prefix: bool | None = None):
    """A Llama-2-style SentencePiece vocabulary (tokenizer.ggml.model "llama"): <unk> <s> </s>,
    the 256 byte tokens, then BPE pieces trained on CORPUS with scores falling by position.
    Metadata only (no tensors): enough for the tokenizer. Returns the token list."""
    from tokenizers import SentencePieceBPETokenizer

    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(CORPUS, vocab_size=vocab_size, show_progress=False)
    pieces = [t for t, _ in sorted(spm.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = (
        [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
        + [TokenType.BYTE] * 256
        + [TokenType.NORMAL] * len(pieces)
    )
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    w = GGUFWriter(path, "llama")
    w.add_context_length(2048)
    w.add_embedding_length(256)
    w.add_block_count(1)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens
