"""GGUF files of real Llama shapes with random weights, in llama.cpp's Q4_K_M (or Q4_K_S) type mix.

    python benchmarks/synthetic_gguf.py llama3-8b /tmp/llama3-8b-q4_k_m.gguf [--device cuda] [--mix q4_k_s]

The mixes are llama.cpp's (`llama_tensor_get_type`), norms F32 in both:
- Q4_K_M: Q4_K everywhere, Q6_K for `output` (for the tied token embedding when there is no
  `output`), and for `attn_v` and `ffn_down` in the layers `use_more_bits` picks (the first and
  last eighth, and every third in between). `planned_bytes` gives the tensor bytes of a shape
  without writing anything: Llama-3-8B 4.58 GiB and Llama-3.2-1B 762.8 MiB, llama.cpp's figures for
  its Q4_K_M files.
- Q4_K_S: Q4_K everywhere, Q6_K for `output` (the tied embedding), Q5_K for `attn_v` in the first
  4 layers and `ffn_down` in the first eighth.

Weights: a pool of 4096 random rows per (format, K), quantized with the project's quantizers
(`inductor_fuse.quant`), then each tensor's rows drawn from its pool at random. Quantizing 8B
weights one by one takes ~50 minutes on a CPU; the pool makes a file in a minute, with the same
bytes per tensor and no two tensors alike. The tokenizer is a byte-level BPE of the 256 byte
tokens and one merge, padded to the vocabulary size (ids are fed directly; text is not the point).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, TokenType

from inductor_fuse.gguf.tokenizer import byte_alphabet
from inductor_fuse.quant.formats import FORMATS

Q4_K, Q5_K, Q6_K = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K
F32 = GGMLQuantizationType.F32
POOL_ROWS = 4096


@dataclass(frozen=True)
class Shape:
    vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    tied: bool  # no `output` tensor: the token embedding is the output projection
    rope_base: float = 500000.0


SHAPES = {  # ../shared/anchors.md
    "llama3-8b": Shape(128256, 4096, 32, 32, 8, 128, 14336, tied=False),
    "llama3-1b": Shape(128256, 2048, 16, 32, 8, 64, 8192, tied=True),
    "tiny": Shape(512, 256, 4, 4, 2, 64, 512, tied=False),  # tests: the same code at a size a CPU writes fast
    "tiny32": Shape(512, 256, 32, 4, 2, 64, 512, tied=False),  # tiny's widths, the 8B's 32 layers: CPU compile time
}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get Q6_K in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


MIXES = {"q4_k_m": 15, "q4_k_s": 14}  # mix -> general.file_type (LLAMA_FTYPE_MOSTLY_*)


def _more_bits_types(mix: str, i: int, n_layers: int) -> tuple[GGMLQuantizationType, GGMLQuantizationType]:
    """(attn_v, ffn_down) types of layer i."""
    if mix == "q4_k_s":
        return (Q5_K if i < 4 else Q4_K), (Q5_K if i < n_layers // 8 else Q4_K)
    more = Q6_K if use_more_bits(i, n_layers) else Q4_K
    return more, more


def tensor_plan(s: Shape, mix: str = "q4_k_m") -> list[tuple[str, tuple[int, int], GGMLQuantizationType]]:
    """(GGUF name, torch shape [N, K] (norms: [N]), type) of every tensor, in file order."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; mixes: {sorted(MIXES)}")
    plan = [("token_embd.weight", (s.vocab, s.dim), Q6_K if s.tied else Q4_K)]
    for i in range(s.n_layers):
        v_type, down_type = _more_bits_types(mix, i, s.n_layers)
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (s.dim,), F32),
            (p + "attn_q.weight", (s.n_heads * s.head_dim, s.dim), Q4_K),
            (p + "attn_k.weight", (s.n_kv_heads * s.head_dim, s.dim), Q4_K),
            (p + "attn_v.weight", (s.n_kv_heads * s.head_dim, s.dim), v_type),
            (p + "attn_output.weight", (s.dim, s.n_heads * s.head_dim), Q4_K),
            (p + "ffn_norm.weight", (s.dim,), F32),
            (p + "ffn_gate.weight", (s.ffn, s.dim), Q4_K),
            (p + "ffn_up.weight", (s.ffn, s.dim), Q4_K),
            (p + "ffn_down.weight", (s.dim, s.ffn), down_type),
        ]
    plan.append(("output_norm.weight", (s.dim,), F32))
    if not s.tied:
        plan.append(("output.weight", (s.vocab, s.dim), Q6_K))
    return plan


def planned_bytes(s: Shape, mix: str = "q4_k_m") -> int:
    """Bytes of the tensor data of the file `write` makes for `s` (without the metadata)."""
    total = 0
    for _, shape, t in tensor_plan(s, mix):
        block, size = GGML_QUANT_SIZES[t]
        total += int(np.prod(shape)) // block * size
    return total


def write(path: str, s: Shape, device: str = "cpu", seed: int = 0, mix: str = "q4_k_m") -> None:
    g = torch.Generator(device=device).manual_seed(seed)
    pools: dict[tuple[str, int], torch.Tensor] = {}  # (fmt, K) -> GGUF bytes uint8 [POOL_ROWS, row bytes]
    w = GGUFWriter(path, "llama")
    w.add_name("synthetic random-weight Llama (inductor_fuse benchmarks)")
    w.add_context_length(131072)
    w.add_embedding_length(s.dim)
    w.add_block_count(s.n_layers)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.n_heads)
    w.add_head_count_kv(s.n_kv_heads)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(s.rope_base)
    w.add_rope_dimension_count(s.head_dim)
    w.add_file_type(MIXES[mix])
    # byte-level BPE: the 256 byte spellings, one merge, fillers, BOS and EOS last
    tokens = [*byte_alphabet().values(), "ab"]
    tokens += [f"<{i}>" for i in range(len(tokens), s.vocab - 2)] + ["<s>", "</s>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.NORMAL] * (s.vocab - 2) + [TokenType.CONTROL] * 2)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(s.vocab - 2)
    w.add_eos_token_id(s.vocab - 1)
    for name, shape, t in tensor_plan(s, mix):
        if t == F32:
            w.add_tensor(name, (1.0 + 0.1 * torch.randn(shape, generator=g, device=device)).cpu().numpy())
            continue
        fmt = FORMATS[t.name.lower()]
        N, K = shape
        key = (fmt.name, K)
        if key not in pools:
            rows = torch.randn(POOL_ROWS, K, generator=g, device=device) * K**-0.5
            pools[key] = fmt.to_gguf_bytes(fmt.quantize(rows))
        pick = torch.randint(0, POOL_ROWS, (N,), generator=g, device=device)
        raw = pools[key][pick].cpu().numpy()
        w.add_tensor(name, raw, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("path")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", choices=sorted(MIXES), default="q4_k_m", help="llama.cpp's type mix (default q4_k_m)")
    args = p.parse_args()
    write(args.path, SHAPES[args.shape], args.device, args.seed, args.mix)
    print(f"wrote {args.path}: {planned_bytes(SHAPES[args.shape], args.mix) / 2**20:.1f} MiB of tensors")


if __name__ == "__main__":
    main()
