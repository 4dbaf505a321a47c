"""A decoder-only transformer covering Llama 2/3 (and Mistral), Qwen2, Qwen3 and Gemma 3.

Written plainly, gpt-fast style: separate q/k/v and gate/up projections, `act(gate(x)) * up(x)`,
RMSNorm as a few tensor ops. No fusion here -- the compiler does that. The families differ only
by flags in `ModelArgs`:

    llama   SiLU GLU, pre-norms
    qwen2   + q/k/v bias
    qwen3   + RMSNorm on each query/key head (QK-norm)
    gemma3  QK-norm, GELU-tanh GLU, sandwich norms (a norm before *and* after attention / MLP),
            embedding scaled by sqrt(dim), 5 of every 6 layers attend within a sliding window with
            their own rope base, query scale 1/sqrt(query_pre_attn_scalar)

Rope is the rotate-half ("NeoX") form everywhere; the GGUF loader un-permutes llama's q/k rows,
which llama.cpp's converter stored for the interleaved-pair form, so one rope serves all.

Decoding uses a static KV cache of `max_seq_len` positions: `forward(tokens [B, S], input_pos [S])`
writes positions `input_pos` and attends over the whole cache through a mask row picked by
`input_pos` -- no data-dependent shapes and no host sync, so the S=1 step captures in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scale: float = 1.0  # linear position scaling of the (global) rope
    rope_freq_factors: tuple[float, ...] | None = None  # Llama 3.1 long-context: frequency i is divided by factor i
    act: str = "silu"
    qkv_bias: bool = False  # qwen2
    qk_norm: bool = False  # qwen3, gemma3
    sandwich_norm: bool = False  # gemma3
    embed_scale: bool = False  # gemma3: embeddings times sqrt(dim)
    sliding_window: int | None = None  # gemma3: tokens a sliding layer sees, itself included
    sliding_window_pattern: int = 0  # gemma3: 6 -> layers 5, 11, 17, ... are global, the rest sliding
    rope_local_base: float = 10000.0  # rope base of sliding-window layers
    query_pre_attn_scalar: float | None = None  # queries scaled by its rsqrt; None: head_dim
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rope, got {self.head_dim}")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ValueError(f"rope_freq_factors needs head_dim/2 = {self.head_dim // 2} entries")
        if self.sliding_window_pattern and not self.sliding_window:
            raise ValueError("sliding_window_pattern needs sliding_window")

    def is_sliding(self, layer: int) -> bool:
        p = self.sliding_window_pattern
        return bool(p) and (layer + 1) % p != 0


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.max_seq_len = 0

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None) -> None:
        """(Re)allocate the KV caches, rope tables and masks for `max_seq_len` positions.

        dtype: of the KV cache; default: the activation dtype (the embedding's: norms may be
        float32 under bfloat16 activations, as load_gguf keeps them)."""
        args = self.args
        device = self.tok_embeddings.weight.device
        dtype = dtype or self.tok_embeddings.weight.dtype
        need = cache_bytes(args, max_batch_size, max_seq_len, dtype)
        free = free_bytes(device)
        if free is not None:
            free += sum(b.nbytes for name, b in self.named_buffers() if name.endswith(_CACHE_BUFFERS))  # (replaced)
            if need > free:
                raise CacheTooLarge(
                    f"setup_caches: {max_batch_size} x {max_seq_len} positions need {need / 2**30:.1f} GiB on {device} "
                    f"(KV cache and attention masks), {free / 2**30:.1f} GiB is free: ask for fewer positions"
                )
        self.max_seq_len = max_seq_len
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size, args.n_kv_heads, max_seq_len, args.head_dim, dtype, device
            )
        # causal[i, j]: query at position i sees key at j (bool [S, S] throughout: no int64 temporaries)
        causal = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=device).tril()
        self.register_buffer("causal_mask", causal, persistent=False)
        rope = rope_table(args.head_dim, args.rope_base, args.rope_scale, args.rope_freq_factors, max_seq_len, device)
        self.register_buffer("rope_global", rope, persistent=False)
        if args.sliding_window_pattern:
            window = causal & ~causal.tril(-args.sliding_window)  # i - j < sliding_window
            self.register_buffer("sliding_mask", window, persistent=False)
            rope = rope_table(args.head_dim, args.rope_local_base, 1.0, None, max_seq_len, device)
            self.register_buffer("rope_local", rope, persistent=False)

    def forward(
        self,
        tokens: Tensor,
        input_pos: Tensor,
        last_only: bool = False,
        live: int | None = None,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        # tokens: [B, S] int, input_pos: [S] int -> logits [B, S, V] (S = 1 with last_only; with
        # logits_at, int [n] indices into S, the logits of those rows only: [B, n, V])
        # live: every input_pos is below it; attention then reads cache positions [0, live) only
        # (prefill: a 512-token prompt in a 32k cache attends over 512 keys, not 32k). None: the
        # whole cache, a shape that does not depend on the position (the decode step's).
        args = self.args
        if live is not None and not 0 < live <= self.max_seq_len:
            raise ValueError(f"live = {live} must be in 1..max_seq_len ({self.max_seq_len})")
        x = self.tok_embeddings(tokens)  # [B, S, D]
        if args.embed_scale:
            # sqrt(dim) rounded to the embedding dtype, as HF does (a device constant: no host tensor in the graph)
            x = x * torch.full((), args.dim**0.5, dtype=x.dtype, device=x.device)
        global_rope = self.rope_global[input_pos]  # [S, 2, head_dim] (cos, sin)
        keys = slice(None, live)
        global_mask = self.causal_mask[None, None, input_pos, keys]  # [1, 1, S, live or max_seq_len]
        if args.sliding_window_pattern:
            local_rope = self.rope_local[input_pos]
            local_mask = self.sliding_mask[None, None, input_pos, keys]
        for i, layer in enumerate(self.layers):
            if args.is_sliding(i):
                x = layer(x, input_pos, local_rope, local_mask, live)
            else:
                x = layer(x, input_pos, global_rope, global_mask, live)
        if last_only:
            x = x[:, -1:]
        elif logits_at is not None:
            x = x.index_select(1, logits_at)
        return self.output(self.norm(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.sandwich_norm = args.sandwich_norm
        if args.sandwich_norm:
            self.post_attention_norm = RMSNorm(args.dim, args.norm_eps)
            self.post_ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, input_pos: Tensor, rope: Tensor, mask: Tensor, live: int | None = None) -> Tensor:
        # x: [B, S, D]
        h = self.attention(self.attention_norm(x), input_pos, rope, mask, live)
        if self.sandwich_norm:
            h = self.post_attention_norm(h)
        x = x + h
        h = self.feed_forward(self.ffn_norm(x))
        if self.sandwich_norm:
            h = self.post_ffn_norm(h)
        return x + h


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)
        self.scale = (args.query_pre_attn_scalar or args.head_dim) ** -0.5
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, rope: Tensor, mask: Tensor, live: int | None = None) -> Tensor:
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, S, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, S, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]
        k, v = self.kv_cache.update(input_pos, k, v)  # [B, Hkv, max_seq_len, hd]
        if live is not None:  # prefill: the live prefix (no test of live against the cache length: no guard)
            k, v = k[:, :, :live], v[:, :, :live]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.n_heads != self.n_kv_heads
        )  # [B, H, S, hd]
        y = y.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)
        return self.o_proj(y)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)
        self.act = args.act

    def forward(self, x: Tensor) -> Tensor:
        if self.act == "silu":
            gate = F.silu(self.gate_proj(x))
        else:
            gate = F.gelu(self.gate_proj(x), approximate="tanh")
        return self.down_proj(gate * self.up_proj(x))


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in float32. (Gemma's `1 + w` is already folded into the GGUF weight.)"""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


class CacheTooLarge(ValueError):
    """`Transformer.setup_caches`: the KV cache and masks asked for do not fit the device's free memory."""


_CACHE_BUFFERS = ("kv", "causal_mask", "sliding_mask", "rope_global", "rope_local")


def cache_bytes(args: ModelArgs, max_batch_size: int, max_seq_len: int, dtype: torch.dtype) -> int:
    """What `setup_caches` allocates at its peak: the KV caches, the causal (and sliding) [S, S] bool
    masks with one more [S, S] while the sliding one is made, and the rope tables (float32 cos and
    sin, [S, 2, head_dim] each)."""
    kv = 2 * args.n_layers * max_batch_size * args.n_kv_heads * max_seq_len * args.head_dim * dtype.itemsize
    n_tables = 2 if args.sliding_window_pattern else 1
    masks = (2 * n_tables - 1) * max_seq_len * max_seq_len
    return kv + masks + n_tables * max_seq_len * 2 * args.head_dim * 4


def free_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take on `device`: on CUDA the driver's free memory plus what the
    caching allocator holds unused; on CPU `dequant_cpu.available_memory` (Linux: MemAvailable).
    None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        from ..patterns.dequant_cpu import available_memory  # (loaded with the package already)

        return available_memory()
    return None


class KVCache(nn.Module):
    """K and V in one buffer, kv [2, B, Hkv, max_seq_len, hd], written by one index_put: Inductor
    then emits one kernel per layer that writes the new K (after its rope, and QK-norm) and V,
    where two index_puts on two buffers were two kernels."""

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (2, batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("kv", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def k_cache(self) -> Tensor:  # [B, Hkv, max_seq_len, hd], a view of kv
        return self.kv[0]

    @property
    def v_cache(self) -> Tensor:
        return self.kv[1]

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # input_pos: [S], k, v: [B, Hkv, S, hd]
        self.kv[:, :, :, input_pos] = torch.stack([k, v]).to(self.kv.dtype)
        return self.kv[0], self.kv[1]


def rope_table(head_dim: int, base: float, scale: float, factors, max_seq_len: int, device) -> Tensor:
    """cos and sin of every position's rotation angles: [max_seq_len, 2, head_dim], rotate-half layout.
    angle(p, i) = p / scale * base^(-2i/head_dim) / factors[i]

    cos and sin are each contiguous along head_dim: a kernel that fuses rope into a reduction over
    head_dim (the QK-norm of Gemma 3 and Qwen3) then reads only unit-stride rows, which Inductor
    needs to emit a one-pass persistent reduction. Interleaved (cos, sin) pairs made it a looped
    reduction whose block size Inductor autotunes; on an H200 one compile picked a small block and
    that kernel took 17.9 us per layer instead of 2.4 (Gemma-3-270M decode 1,010 tok/s, not 1,410)."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float64, device=device) * 2 / head_dim))
    if factors is not None:
        inv_freq = inv_freq / torch.tensor(factors, dtype=torch.float64, device=device)
    pos = torch.arange(max_seq_len, dtype=torch.float64, device=device) / scale
    angles = torch.outer(pos, inv_freq).repeat(1, 2)  # [max_seq_len, head_dim]: (f0..f_half-1, f0..f_half-1)
    return torch.stack([angles.cos(), angles.sin()], dim=1).float()


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    # x: [B, S, H, hd], rope: [S, 2, hd]  ->  x * cos + rotate_half(x) * sin, in float32
    cos, sin = rope[None, :, None, 0], rope[None, :, None, 1]
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).type_as(x)
