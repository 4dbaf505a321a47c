"""GGUF file -> (Transformer with quantized weights, tokenizer).

    model, tokenizer = load_gguf("gemma-3-270m-q4_k_m.gguf", device="cuda", max_seq_len=4096)

The file is read by `reader.read_gguf` (memory-mapped). Linear weights stay in their GGUF
format as `QuantizedLinear` (no re-quantization); F32/F16/BF16 linears become float `nn.Linear`.
The token embedding is dequantized to the model dtype (it is a gather); a tied output projection
(no `output.weight`) reuses the embedding's quantized planes. Norms are float.

Every failure -- unreadable file, wrong magic, truncated data, unknown architecture, missing
tensor, unsupported tensor type -- raises GGUFLoadError naming the file and the cause, before
anything is returned.

llama.cpp conventions this loader undoes or relies on:
- ggml lists dims innermost first: a weight [N, K] has GGUF shape (K, N).
- For `llama` the converter permuted the q/k rows of each head from the rotate-half layout to
  interleaved pairs (llama.cpp's "normal" rope). We permute them back (a row gather, exact on the
  quantized planes too) so every family uses one rotate-half rope. qwen2/qwen3/gemma3 are stored
  unpermuted (NeoX rope).
- Gemma's RMSNorm multiplies by (1 + w); the converter stores w + 1, so the file's weight is used
  as a plain x * w.
- `phi3` stores q|k|v as one tensor (`attn_qkv`, rows q then k then v) and gate|up as one
  (`ffn_up`, rows gate then up). The loader gives each projection its rows (a row slice of the
  quantized planes, exact), so the model is the one of every other family and the rule families
  fuse them again at compile time. Like llama.cpp, it ignores a `phi3.attention.sliding_window`
  (a WARNING says so); LongRoPE files (`rope_factors_long.weight`: the 128k variants) are refused.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from tqdm.auto import tqdm

from ..models.transformer import CacheTooLarge, ModelArgs, RMSNorm, Transformer
from ..quant import QuantizedLinear, QuantizedWeight
from ..quant.formats import GGUF_FORMATS
from .metadata import GGUFLoadError, field_value, require
from .reader import GGUFFile, read_gguf
from .tokenizer import GGUFTokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def load_gguf(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    max_seq_len: int = 4096,
    dtype: torch.dtype | None = None,
    max_batch_size: int = 1,
    progress: bool = True,
) -> tuple[Transformer, GGUFTokenizer]:
    """Build the model and tokenizer a GGUF file describes.

    dtype: activations, KV cache, embedding and float weights (default: float32 on CPU, bfloat16
    elsewhere). Returns the model in eval mode with caches for `max_batch_size` x `max_seq_len`
    (CacheTooLarge, a ValueError, where those do not fit the device's free memory).
    """
    path = os.fspath(path)
    device = torch.device(device)  # (a bad string: RuntimeError naming it)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    # the caller's mistakes, said as such before the file is read (not as an error of the file)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"load_gguf: dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if not (
        isinstance(max_seq_len, int) and max_seq_len >= 1 and isinstance(max_batch_size, int) and max_batch_size >= 1
    ):
        raise ValueError(
            f"load_gguf: max_seq_len and max_batch_size must be integers >= 1, got {max_seq_len!r}, {max_batch_size!r}"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"load_gguf: device {device} asked for, but this torch sees no CUDA device")
    # The CUDA context is created on a thread while this one parses the file and converts the
    # weights (its creation, a few tenths of a second, would otherwise wait for the first weight copy).
    with ThreadPoolExecutor(1, thread_name_prefix="inductor_fuse-load") as pool:
        device_job = pool.submit(_start_device, device) if device.type == "cuda" else None
        reader = _open(path)
        try:
            args = model_args(reader, path)
            arch = field_value(reader, "general.architecture")
            tensors = {t.name: t for t in reader.tensors}
            plan = _plan(args, reader, tensors, path, arch)  # every tensor checked before anything is built
            tokenizer = GGUFTokenizer.from_reader(reader, path)
            if tokenizer.vocab_size > args.vocab_size:  # (more rows than tokens: padding, common and harmless)
                raise GGUFLoadError(
                    f"{path}: the vocabulary has {tokenizer.vocab_size} tokens, token_embd.weight {args.vocab_size} "
                    "rows: the ids past them would have no embedding"
                )
            model = _build(args, arch, plan, tensors, path, device, dtype, progress)
            model.setup_caches(max_batch_size, max_seq_len, dtype)
            if device_job is not None:
                device_job.result()  # its error, if the build did not meet it first
        except (GGUFLoadError, CacheTooLarge):  # (the second is the caller's max_seq_len, not the file)
            raise
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
            raise GGUFLoadError(f"{path}: {type(e).__name__}: {e}") from e
    return model.eval(), tokenizer


def _start_device(device: torch.device) -> None:
    """Create the CUDA context of `device` (and its caching allocator) by putting one value there."""
    torch.zeros(1, device=device)


def _open(path: str) -> GGUFFile:
    if not os.path.exists(path):
        raise GGUFLoadError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise GGUFLoadError(
            f"{path}: not a regular file ({'a directory' if os.path.isdir(path) else 'a device, pipe or socket'})"
        )
    return read_gguf(path, populate=True)  # every declared length and tensor byte range checked


def _scalar(reader: GGUFFile, key: str, path: str, default: Any = None) -> Any:
    """A per-model hyperparameter; GGUF allows a per-layer array, which must be uniform here."""
    value = field_value(reader, key, default) if default is not None else require(reader, key, path)
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise GGUFLoadError(f"{path}: {key} varies per layer ({value}); not supported")
        value = value[0]
    return value


def _whole(value: Any, key: str, path: str) -> int:
    """value as an int (a count, a size): one that is no whole number is a GGUFLoadError naming `key`."""
    try:
        n = int(value)
        whole = not isinstance(value, bool) and (isinstance(value, (int, str)) or float(value) == n)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise GGUFLoadError(f"{path}: {key} is {value!r}, not an integer")
    return n


def _integer(reader: GGUFFile, key: str, path: str, default: Any = None) -> int:
    """_scalar(key) as an int (_whole)."""
    return _whole(_scalar(reader, key, path, default), key, path)


def _number(reader: GGUFFile, key: str, path: str, default: Any = None) -> float:
    """_scalar(key) as a float: a value that is no number (a bool, text that does not read as one)
    is a GGUFLoadError naming `key` (the range is the caller's to check)."""
    raw = _scalar(reader, key, path, default)
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        value = None
    if isinstance(raw, bool) or value is None:
        raise GGUFLoadError(f"{path}: {key} is {raw!r}, not a number")
    return value


def _positive(reader: GGUFFile, key: str, path: str, default: Any = None, cast: type = float) -> float:
    """_scalar(key) as `cast`, when finite and > 0 (a rope base, a scale, a window): else a GGUFLoadError."""
    raw = _scalar(reader, key, path, default)
    try:  # (GGUFLoadError is a ValueError: the message below names the key as well)
        value = _whole(raw, key, path) if cast is int else float(raw)
    except (TypeError, ValueError, OverflowError):
        value = None
    if isinstance(raw, bool) or value is None or not (value > 0 and math.isfinite(value)):  # (NaN, inf included)
        raise GGUFLoadError(f"{path}: {key} is {raw!r}, not a finite number > 0")
    return value


# Header values the model built here does not compute, which change what a model computes: a value
# other than these defaults is refused (the model would run, with other logits).
_UNBUILT = {
    "expert_count": (0, "a mixture of experts"),
    "attn_logit_softcapping": (0, "attention logit softcapping"),
    "final_logit_softcapping": (0, "final logit softcapping"),
    "attention.layer_norm_epsilon": (None, "LayerNorm (not RMSNorm)"),
    "attention.causal": (True, "non-causal attention"),
    "use_parallel_residual": (False, "parallel attention and MLP"),
}


def _refuse_unbuilt(reader: GGUFFile, arch: str, path: str) -> None:
    """GGUFLoadError for a header value of `_UNBUILT` off its default. A sliding window outside gemma3
    is ignored with a WARNING: full attention (llama.cpp's for phi3 too)."""
    for key, (default, what) in _UNBUILT.items():
        value = field_value(reader, f"{arch}.{key}")
        if value is not None and value != default:
            raise GGUFLoadError(f"{path}: {arch}.{key} = {value!r}: {what} is not supported")
    window = field_value(reader, f"{arch}.attention.sliding_window")
    if arch != "gemma3" and window:
        also = ", as llama.cpp does" if arch == "phi3" else ""
        log.warning("%s: %s.attention.sliding_window = %s ignored%s: full attention", path, arch, window, also)


def model_args(reader: GGUFFile, path: str = "<gguf>") -> ModelArgs:
    """ModelArgs from a GGUF file's metadata (and the shapes of its tensors)."""
    arch = field_value(reader, "general.architecture")
    if arch is None:
        raise GGUFLoadError(f"{path}: missing metadata key 'general.architecture'")
    if arch not in ARCHITECTURES:
        raise GGUFLoadError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise GGUFLoadError(f"{path}: missing tensor 'token_embd.weight'")

    dim = _integer(reader, f"{arch}.embedding_length", path)
    n_heads = _integer(reader, f"{arch}.attention.head_count", path)
    n_kv_heads = _integer(reader, f"{arch}.attention.head_count_kv", path, n_heads)
    n_layers = _integer(reader, f"{arch}.block_count", path)
    # a lying header must not build a 16M-layer skeleton or divide by zero
    for key, n, most in (
        ("attention.head_count", n_heads, dim),
        ("attention.head_count_kv", n_kv_heads, n_heads),
        ("block_count", n_layers, len(tensors)),
    ):
        if not 0 < n <= most:
            raise GGUFLoadError(f"{path}: {arch}.{key} is {n}, not in 1..{most}")
    head_dim = _integer(reader, f"{arch}.attention.key_length", path, dim // n_heads)
    value_dim = _integer(reader, f"{arch}.attention.value_length", path, head_dim)
    if value_dim != head_dim:
        raise GGUFLoadError(f"{path}: key_length {head_dim} != value_length {value_dim}; not supported")
    rope_dims = _integer(reader, f"{arch}.rope.dimension_count", path, head_dim)
    if rope_dims != head_dim:
        raise GGUFLoadError(f"{path}: partial rope ({rope_dims} of {head_dim} dims) is not supported")

    # as llama.cpp reads it: the type defaults to linear; the factor is rope.scaling.factor, else the
    # older rope.scale_linear; absent or 0: no scaling
    rope_scale = 1.0
    scaling = field_value(reader, f"{arch}.rope.scaling.type", "linear")
    if scaling not in ("none", "linear"):
        raise GGUFLoadError(f"{path}: rope scaling {scaling!r} is not supported (only linear)")
    factor_key = next(
        (k for k in (f"{arch}.rope.scaling.factor", f"{arch}.rope.scale_linear") if field_value(reader, k) is not None),
        None,
    )
    if scaling == "linear" and factor_key is not None and _scalar(reader, factor_key, path) != 0:
        rope_scale = _positive(reader, factor_key, path)
    factors = None
    if "rope_freqs.weight" in tensors:  # Llama 3.1 long-context frequency factors
        factors = tuple(
            float(f)
            for f in gguf_dequantize(
                tensors["rope_freqs.weight"].data, tensors["rope_freqs.weight"].tensor_type
            ).reshape(-1)
        )
        if not all(math.isfinite(f) and f > 0 for f in factors):
            raise GGUFLoadError(f"{path}: rope_freqs.weight holds a factor that is not a finite number > 0")

    embd_shape = tuple(int(d) for d in reversed(tensors["token_embd.weight"].shape))
    if len(embd_shape) != 2:
        raise GGUFLoadError(f"{path}: tensor 'token_embd.weight' has shape {embd_shape}, not [vocab, dim]")
    common = dict(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        intermediate_size=_integer(reader, f"{arch}.feed_forward_length", path),
        norm_eps=_number(reader, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-5),
        rope_base=_positive(reader, f"{arch}.rope.freq_base", path, 10000.0),
        rope_scale=rope_scale,
        rope_freq_factors=factors,
        tie_embeddings="output.weight" not in tensors,
    )
    # values that would turn every logit NaN: a negative epsilon (rope bases and scales: _positive)
    if not 0 <= common["norm_eps"] < 1:  # (NaN fails every comparison)
        raise GGUFLoadError(f"{path}: {arch}.attention.layer_norm_rms_epsilon is {common['norm_eps']}, not in [0, 1)")
    _refuse_unbuilt(reader, arch, path)
    if arch == "llama":
        return ModelArgs(**common)
    if arch == "phi3":
        if "rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors:
            raise GGUFLoadError(f"{path}: phi3 LongRoPE (rope_factors_long / rope_factors_short) is not supported")
        return ModelArgs(**common)
    if arch == "qwen2":
        return ModelArgs(**common, qkv_bias=True)
    if arch == "qwen3":
        return ModelArgs(**common, qk_norm=True)
    # gemma3, as llama.cpp builds it: every 6th layer global, the others a sliding window with
    # rope base 10000 and no rope scaling; queries scaled by 1/sqrt(head_dim), except the 62-layer
    # 27B whose query_pre_attn_scalar is dim / n_heads.
    pattern = field_value(reader, "gemma3.attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        raise GGUFLoadError(f"{path}: a per-layer gemma3.attention.sliding_window_pattern is not supported")
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise GGUFLoadError(f"{path}: gemma3.attention.sliding_window_pattern is {pattern!r}, not an integer >= 1")
    return ModelArgs(
        **common,
        act="gelu_tanh",
        qk_norm=True,
        sandwich_norm=True,
        embed_scale=True,
        sliding_window=_positive(reader, "gemma3.attention.sliding_window", path, cast=int),
        sliding_window_pattern=pattern,
        rope_local_base=_positive(reader, "gemma3.rope.freq_base_swa", path, 10000.0),
        query_pre_attn_scalar=float(dim // n_heads if n_layers == 62 else head_dim),
    )


# module path in Transformer -> GGUF tensor name, per layer ("{i}") and global.
_GLOBAL = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_LAYER = {
    "attention_norm": "attn_norm",
    "attention.q_proj": "attn_q",
    "attention.k_proj": "attn_k",
    "attention.v_proj": "attn_v",
    "attention.o_proj": "attn_output",
    "attention.q_norm": "attn_q_norm",
    "attention.k_norm": "attn_k_norm",
    "post_attention_norm": "post_attention_norm",
    "ffn_norm": "ffn_norm",
    "feed_forward.gate_proj": "ffn_gate",
    "feed_forward.up_proj": "ffn_up",
    "feed_forward.down_proj": "ffn_down",
    "post_ffn_norm": "post_ffw_norm",
}


# phi3: module path -> (fused GGUF tensor, the projections stacked in its rows, this one's index)
_FUSED = {
    "attention.q_proj": ("attn_qkv", ("q_proj", "k_proj", "v_proj"), 0),
    "attention.k_proj": ("attn_qkv", ("q_proj", "k_proj", "v_proj"), 1),
    "attention.v_proj": ("attn_qkv", ("q_proj", "k_proj", "v_proj"), 2),
    "feed_forward.gate_proj": ("ffn_up", ("gate_proj", "up_proj"), 0),
    "feed_forward.up_proj": ("ffn_up", ("gate_proj", "up_proj"), 1),
}


def _plan(
    args: ModelArgs, reader: GGUFFile, tensors: dict, path: str, arch: str
) -> dict[str, tuple[str, slice | None]]:
    """module path -> (GGUF tensor name, its rows for this module: None for all) for every weight
    the model needs; checks presence, shape, type."""
    with torch.device("meta"):
        skeleton = Transformer(args)
    plan = {}
    fused_rows = {}  # module path -> the rows of the fused tensor it is sliced from (phi3)
    for name, module in skeleton.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding, RMSNorm)):
            rows = None
            if name.startswith("layers."):
                _, i, rest = name.split(".", 2)
                if arch == "phi3" and rest in _FUSED:
                    fused, parts, k = _FUSED[rest]
                    parent = skeleton.get_submodule(name.rpartition(".")[0])
                    sizes = [getattr(parent, p).out_features for p in parts]
                    rows = slice(sum(sizes[:k]), sum(sizes[: k + 1]))
                    fused_rows[name] = sum(sizes)
                    gguf_name = f"blk.{i}.{fused}"
                else:
                    gguf_name = f"blk.{i}.{_LAYER[rest]}"
            else:
                gguf_name = _GLOBAL[name]
            if name == "output" and args.tie_embeddings:
                continue
            plan[name] = (gguf_name, rows)
    for name, (gguf_name, _) in plan.items():
        module = skeleton.get_submodule(name)
        for part, param in module.named_parameters():
            key = f"{gguf_name}.{part}"
            if key not in tensors:
                raise GGUFLoadError(f"{path}: missing tensor {key!r} (for {name}.{part})")
            t = tensors[key]
            shape = tuple(int(d) for d in reversed(t.shape))  # ggml order -> torch order
            expected = tuple(param.shape)
            if name in fused_rows:  # the fused tensor holds this module's rows among its siblings'
                expected = (fused_rows[name], *expected[1:])
            if shape != expected:
                raise GGUFLoadError(f"{path}: tensor {key!r} has shape {shape}, the model expects {expected}")
            ggml_type = GGMLQuantizationType(t.tensor_type)
            quantized_ok = isinstance(module, nn.Linear) and part == "weight" and ggml_type in GGUF_FORMATS
            if name == "tok_embeddings":
                quantized_ok = ggml_type in GGUF_FORMATS
            if ggml_type not in FLOAT_TYPES and not quantized_ok:
                supported = sorted(t.name for t in (*FLOAT_TYPES, *GGUF_FORMATS))
                raise GGUFLoadError(
                    f"{path}: tensor {key!r} has unsupported type {ggml_type.name} for {name}.{part} "
                    f"(supported: {supported})"
                )
    used = {f"{g}.{part}" for n, (g, _) in plan.items() for part, _ in skeleton.get_submodule(n).named_parameters()}
    unused = sorted(set(tensors) - used - {"rope_freqs.weight"})
    beyond = sorted({int(k.split(".")[1]) for k in unused if k.startswith("blk.") and k.split(".")[1].isdigit()})
    beyond = [i for i in beyond if i >= args.n_layers]
    if beyond:  # a header that says fewer layers than the file has would build a smaller, different model
        raise GGUFLoadError(
            f"{path}: {arch}.block_count is {args.n_layers}, but the file has tensors of layer(s) {beyond[:5]}"
        )
    # a tensor of a module the model loads, that the model has no place for (a q/k/v bias in a
    # llama file): dropping it would change the outputs silently
    dropped = [k for k in unused if k.rsplit(".", 1)[0] + ".weight" in used]
    if dropped:
        raise GGUFLoadError(
            f"{path}: tensor(s) {dropped[:5]} belong to modules the {arch} model loads but has no parameter "
            f"for (a bias where the model has none?); loading would drop them"
        )
    if unused:
        log.warning("%s: %d tensor(s) not used by the model, e.g. %s", path, len(unused), unused[:5])
    return plan


def _planes(t) -> QuantizedWeight | None:
    """A 2-D GGUF tensor of a format in quant.FORMATS as its QuantizedWeight; None for others."""
    if GGMLQuantizationType(t.tensor_type) in GGUF_FORMATS and len(t.shape) == 2:
        return QuantizedWeight.from_gguf(t)
    return None


def _float(t, dtype: torch.dtype, device: torch.device, qw: QuantizedWeight | None = None) -> torch.Tensor:
    """A GGUF tensor dequantized to `dtype`, in torch order (qw: its planes, when already read)."""
    qw = qw if qw is not None else _planes(t)
    if qw is not None:
        return qw.dequantize().to(device=device, dtype=dtype)  # torch, bit-exact
    shape = tuple(int(d) for d in reversed(t.shape))
    values = np.array(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return torch.from_numpy(values).to(device=device, dtype=dtype)


def _unpermute_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permute: GGUF row h*D + 2j + s holds HF row h*D + s*D/2 + j."""
    h = torch.arange(n_heads)[:, None, None]
    s = torch.arange(2)[None, :, None]
    j = torch.arange(head_dim // 2)[None, None, :]
    return (h * head_dim + 2 * j + s).reshape(-1)  # indexed by HF row (h, s, j)


def _linear(t, bias, rows: torch.Tensor | None, dtype, device, qw: QuantizedWeight | None = None) -> nn.Module:
    if GGMLQuantizationType(t.tensor_type) in FLOAT_TYPES:
        w = _float(t, dtype, device)
        if rows is not None:
            w = w[rows.to(device)].contiguous()
        linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(w, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return linear
    qw = qw if qw is not None else QuantizedWeight.from_gguf(t)
    if rows is not None:
        qw = QuantizedWeight(qw.fmt, tuple(p[rows].contiguous() for p in qw.planes), (len(rows), qw.shape[1]))
    qw = qw.to(device)
    return QuantizedLinear.from_weight(qw, bias)


def _build(args, arch, plan, tensors, path, device, dtype, progress) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    embed_planes = None  # the token embedding's QuantizedWeight, when it is quantized
    fused = {}  # phi3: the fused tensor being sliced, its QuantizedWeight read once for all its slices
    for name, (gguf_name, slice_rows) in tqdm(
        plan.items(), desc=f"loading {os.path.basename(path)}", unit="tensor", disable=not progress
    ):
        t = tensors[f"{gguf_name}.weight"]
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, attr)
        if isinstance(module, nn.Embedding):
            embed_planes = _planes(t)  # read once: a tied output reuses them
            module.weight = nn.Parameter(_float(t, dtype, device, embed_planes), requires_grad=False)
        elif isinstance(module, nn.Linear):
            bias = _float(tensors[f"{gguf_name}.bias"], dtype, device) if module.bias is not None else None
            rows = None
            if arch == "llama" and attr in ("q_proj", "k_proj"):
                n = args.n_heads if attr == "q_proj" else args.n_kv_heads
                rows = _unpermute_rows(n, args.head_dim)
            qw = None
            if slice_rows is not None:  # phi3: this projection's rows of a fused tensor
                rows = torch.arange(slice_rows.start, slice_rows.stop)
                if gguf_name not in fused:
                    fused = {gguf_name: _planes(t)}  # (None for a float tensor)
                qw = fused[gguf_name]
            setattr(parent, attr, _linear(t, bias, rows, dtype, device, qw))
        else:  # RMSNorm: float32 weights, whatever the activation dtype
            module.weight = nn.Parameter(_float(t, torch.float32, device).reshape(-1), requires_grad=False)
    if args.tie_embeddings:
        t = tensors["token_embd.weight"]
        if GGMLQuantizationType(t.tensor_type) in FLOAT_TYPES:
            model.output = nn.Linear(args.dim, args.vocab_size, bias=False, device="meta")
            model.output.weight = model.tok_embeddings.weight  # shared
        else:
            model.output = _linear(t, None, None, dtype, device, embed_planes)
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if leftover:
        raise GGUFLoadError(f"{path}: no tensor for {leftover[:5]}")
    return model
