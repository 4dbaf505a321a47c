"""load_gguf on tiny GGUF files written like llama.cpp's converter, quantized by the project's
quantizers: the loaded model's logits equal those of transformers' float model built from the
dequantized weights (prefill and step-by-step decode)."""

import threading

import pytest
import torch
import torch.nn as nn
from numerics import rel_err
from tiny_gguf import hf_reference, write_tiny_gguf

from inductor_fuse.gguf import GGUFLoadError, load_gguf, loader
from inductor_fuse.models.generate import decode_one_token, generate
from inductor_fuse.quant import QuantizedLinear

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
PROMPT = "Once upon a time, the capital of France is Paris. def f(x):\n    return x"
RTOL = 1e-3  # relative error (Frobenius) in float32


@pytest.fixture(scope="module")
def loaded(tiny_gguf):
    cache = {}

    def get(arch):
        if arch not in cache:
            path, sd, config, _ = tiny_gguf(arch)
            model, tok = load_gguf(path, max_seq_len=64, progress=False)
            cache[arch] = (model, tok, hf_reference(arch, sd, config))
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_prefill_logits_match_float_reference(loaded, arch):
    model, tok, ref = loaded(arch)
    ids = tok.encode(PROMPT)
    assert len(ids) > 8  # longer than gemma3's test sliding window (4)
    x = torch.tensor([ids])
    ours = model(x, torch.arange(len(ids)))
    theirs = ref(x).logits
    assert ours.shape == theirs.shape
    err = rel_err(ours, theirs)
    assert err < RTOL, f"{arch}: relative error {err:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_decode_steps_match_float_reference(loaded, arch):
    """Prefill, then S=1 steps through the KV cache; each step's logits equal a full forward."""
    model, tok, ref = loaded(arch)
    ids = tok.encode(PROMPT)[:12]
    model(torch.tensor([ids]), torch.arange(len(ids)))
    seq = list(ids)
    for _ in range(4):
        full = ref(torch.tensor([seq])).logits[0, -1]
        nxt = int(full.argmax())
        step = model(torch.tensor([[nxt]]), torch.tensor([len(seq)]))[0, -1]
        seq.append(nxt)
        full_next = ref(torch.tensor([seq])).logits[0, -1]
        err = rel_err(step, full_next)
        assert err < RTOL, f"{arch}: step {len(seq)}: relative error {err:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_matches_reference(loaded, arch):
    model, tok, ref = loaded(arch)
    ids = tok.encode("The capital of France is")
    ours = generate(model, ids, 6)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, len(ids) :]
    assert ours == theirs.tolist()


def test_weights_stay_in_gguf_formats(loaded):
    model, _, _ = loaded("llama")
    attn, mlp = model.layers[0].attention, model.layers[0].feed_forward
    assert [m.fmt for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)] == ["q4_k", "q4_k", "q6_k", "q4_k"]
    assert [m.fmt for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)] == ["q4_k", "q4_k", "q6_k"]
    assert isinstance(model.output, QuantizedLinear) and model.output.fmt == "q6_k"
    assert isinstance(model.tok_embeddings, nn.Embedding) and model.tok_embeddings.weight.dtype == torch.float32
    assert model.norm.weight.dtype == torch.float32


def test_phi3_fused_tensors_are_split_then_fused_again_by_the_rules(tiny_gguf):
    """phi3 stores q|k|v and gate|up fused: the loader gives each projection its rows of the
    quantized planes (the logits tests above check them against transformers' Phi3), and the
    compiled decode step fuses them again (siblings: q|k|v, glu: gate|up) with unchanged tokens."""
    import inductor_fuse

    path = tiny_gguf("phi3")[0]
    model, tok = load_gguf(path, max_seq_len=64, progress=False)
    args = model.args
    attn, mlp = model.layers[0].attention, model.layers[0].feed_forward
    q, kv, ffn = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.intermediate_size
    assert [(m.fmt, m.out_features) for m in (attn.q_proj, attn.k_proj, attn.v_proj)] == [
        ("q4_k", q),
        ("q4_k", kv),
        ("q4_k", kv),
    ]
    assert [(m.fmt, m.out_features) for m in (mlp.gate_proj, mlp.up_proj)] == [("q4_k", ffn)] * 2
    ids = tok.encode("The capital of France is")
    eager = generate(model, ids, 6)
    step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True)
    assert generate(model, ids, 6, decode_fn=step) == eager
    counts = inductor_fuse.last_report().counts
    assert counts["siblings"] == args.n_layers and counts["glu"] == args.n_layers, counts


def test_phi3_sliding_window_is_ignored_with_a_warning(tmp_path, tiny_gguf, caplog):
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "phi3-swa.gguf"
    write_tiny_gguf(path, "phi3", tokenizer=tiny_gguf("phi3")[3], extra_kv={"phi3.attention.sliding_window": 2047})
    with caplog.at_level("WARNING", logger="inductor_fuse.gguf.loader"):
        model, _ = load_gguf(str(path), max_seq_len=64, progress=False)
    assert "phi3.attention.sliding_window = 2047 ignored" in caplog.text
    assert not model.args.sliding_window_pattern


def test_phi3_long_rope_is_refused(tmp_path, tiny_gguf):
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "phi3-128k.gguf"
    long = {"rope_factors_long.weight": torch.ones(32).numpy()}
    write_tiny_gguf(path, "phi3", tokenizer=tiny_gguf("phi3")[3], extra=long)
    with pytest.raises(
        GGUFLoadError, match=r"phi3 LongRoPE \(rope_factors_long / rope_factors_short\) is not supported"
    ):
        load_gguf(str(path), progress=False)


def test_tied_output_reuses_embedding_planes(loaded):
    model, _, _ = loaded("qwen3")  # written without output.weight
    assert model.args.tie_embeddings
    assert isinstance(model.output, QuantizedLinear) and model.output.fmt == "q8_0"


def test_dense_output_and_bias(loaded):
    model, _, _ = loaded("qwen2")  # output.weight is F16; q/k/v carry biases
    assert type(model.output) is nn.Linear and model.output.weight.dtype == torch.float32
    assert model.layers[0].attention.q_proj.bias is not None


def test_model_args_from_metadata(loaded):
    args = loaded("gemma3")[0].args
    assert (args.act, args.qk_norm, args.sandwich_norm, args.embed_scale) == ("gelu_tanh", True, True, True)
    assert (args.sliding_window, args.sliding_window_pattern, args.rope_local_base) == (4, 6, 10000.0)
    assert [args.is_sliding(i) for i in range(6)] == [True] * 5 + [False]
    args = loaded("llama")[0].args
    assert (args.n_layers, args.dim, args.n_heads, args.n_kv_heads, args.head_dim) == (2, 256, 4, 2, 64)
    assert args.rope_base == 500000.0 and not args.tie_embeddings


def test_bfloat16_load(tiny_gguf):
    path, sd, config, _ = tiny_gguf("llama")
    model, tok = load_gguf(path, max_seq_len=32, dtype=torch.bfloat16, progress=False)
    ids = tok.encode(PROMPT)[:10]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), torch.arange(len(ids)))
        ref = hf_reference("llama", sd, config)(torch.tensor([ids])).logits
    assert logits.dtype == torch.bfloat16
    assert rel_err(logits, ref) < 3e-2


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compiled_decode_step_gives_eager_tokens(loaded, arch):
    """The S=1 step compiled whole (fullgraph, no recompiles across positions) = eager, token for token."""
    model, tok, _ = loaded(arch)
    ids = tok.encode("The capital of France is")
    eager = generate(model, ids, 10)
    step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True)
    # decode_one_token may already be compiled for another model in this process: the first
    # step compiles for this one (its weights are guarded), later positions must not recompile.
    generate(model, ids, 2, decode_fn=step)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(model, ids, 10, decode_fn=step)
    assert compiled == eager


def test_resized_cache_keeps_the_activation_dtype(tiny_gguf):
    # examples/decode.py re-sizes the cache for long generations; norms stay float32 under
    # bfloat16 activations, and the cache once took their dtype: "query bf16, key float" in SDPA.
    path = tiny_gguf("gemma3")[0]
    model, _ = load_gguf(path, max_seq_len=16, dtype=torch.bfloat16, progress=False)
    model.setup_caches(1, 64)
    assert model.layers[0].attention.kv_cache.k_cache.dtype == torch.bfloat16
    assert len(generate(model, [5, 7, 11], 4)) == 4


def test_a_cuda_load_starts_the_device_on_a_thread(tiny_gguf, monkeypatch):
    # load_gguf creates the CUDA context on a thread while it parses and converts; here the
    # device job only records on which thread it ran, and the build's own error (this machine
    # may have no CUDA) still comes out as a GGUFLoadError naming the file
    started = []
    parse = loader._open

    def record_open(path):
        started.append(("open", threading.current_thread().name))
        return parse(path)

    def fake_start(device):
        started.append((str(device), threading.current_thread().name))

    def build_fails(*args, **kwargs):
        raise RuntimeError("no CUDA device in this test")

    build = loader._build
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (load_gguf refuses cuda without a device)
    monkeypatch.setattr(loader, "_start_device", fake_start)
    monkeypatch.setattr(loader, "_open", record_open)
    monkeypatch.setattr(loader, "_build", build_fails)
    path = tiny_gguf("llama")[0]
    with pytest.raises(GGUFLoadError, match="no CUDA device in this test") as e:
        load_gguf(path, device="cuda:0", progress=False)
    assert path in str(e.value)
    device_threads = [thread for what, thread in started if what == "cuda:0"]
    assert len(device_threads) == 1 and device_threads[0].startswith("inductor_fuse-load")
    assert ("open", threading.main_thread().name) in started
    # a CPU load (the real build) parses on this thread and starts no device job
    started.clear()
    monkeypatch.setattr(loader, "_build", build)
    load_gguf(path, device="cpu", max_seq_len=8, progress=False)
    assert started == [("open", threading.main_thread().name)]


def test_the_device_jobs_error_is_not_lost(tiny_gguf, monkeypatch):
    # the build succeeds (on the CPU, standing in for the device), the device job failed: the
    # load fails with its error, naming the file
    def start_fails(device):
        raise RuntimeError("CUDA error: invalid device ordinal (test)")

    build = loader._build

    def build_on_cpu(args, arch, plan, tensors, path, device, *rest):
        return build(args, arch, plan, tensors, path, torch.device("cpu"), *rest)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (load_gguf refuses cuda without a device)
    monkeypatch.setattr(loader, "_start_device", start_fails)
    monkeypatch.setattr(loader, "_build", build_on_cpu)
    path = tiny_gguf("llama")[0]
    with pytest.raises(GGUFLoadError, match="invalid device ordinal") as e:
        load_gguf(path, device="cuda:0", dtype=torch.float32, max_seq_len=8, progress=False)
    assert path in str(e.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype=torch.int8), "dtype must be torch.float32"),
        (dict(dtype="bfloat16"), "dtype must be torch.float32"),
        (dict(max_seq_len=-4), "max_seq_len and max_batch_size must be integers >= 1"),
        (dict(max_seq_len=0), "max_seq_len and max_batch_size must be integers >= 1"),
        (dict(max_batch_size=0), "max_seq_len and max_batch_size must be integers >= 1"),
    ],
)
def test_the_callers_mistakes_are_not_called_errors_of_the_file(tiny_gguf, kwargs, message):
    path = tiny_gguf("llama")[0]
    with pytest.raises(ValueError, match=message) as e:
        load_gguf(path, progress=False, **kwargs)
    assert not isinstance(e.value, GGUFLoadError) and path not in str(e.value)


def test_cuda_without_a_device_is_said_before_the_file_is_read(tiny_gguf, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        load_gguf(tiny_gguf("llama")[0], device="cuda", progress=False)


def test_a_vocabulary_larger_than_the_embedding_is_refused(tiny_gguf, tmp_path):
    """Five tokens added to the vocabulary, none to token_embd: their ids would index past the
    embedding (a raw IndexError at generation). More rows than tokens (padding) stays fine."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    src = GGUFReader(tiny_gguf("llama")[0])
    path = tmp_path / "more-tokens.gguf"
    w = GGUFWriter(str(path), src.fields["general.architecture"].contents())
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, kind = field.contents(), field.types[0]
        sub = field.types[1] if kind == GGUFValueType.ARRAY else None
        if name == "tokenizer.ggml.tokens":
            value = value + [f"<extra_{i}>" for i in range(5)]
        if name == "tokenizer.ggml.token_type":
            value = value + [1] * 5
        w.add_key_value(name, value, kind, sub_type=sub)
    for t in src.tensors:
        kind = GGMLQuantizationType(t.tensor_type)
        raw = None if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) else kind
        w.add_tensor(t.name, np.array(t.data), raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rows = int(src.tensors[[t.name for t in src.tensors].index("token_embd.weight")].shape[1])
    with pytest.raises(GGUFLoadError, match=f"the vocabulary has {rows + 5} tokens, token_embd.weight {rows} rows"):
        load_gguf(path, max_seq_len=8, progress=False)


@pytest.mark.parametrize(
    ("kv", "scale"),
    [
        ({}, 1.0),
        ({"llama.rope.scaling.factor": 4.0}, 4.0),  # no type: linear, as llama.cpp reads it
        ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}, 2.0),
        ({"llama.rope.scale_linear": 8.0}, 8.0),  # the older key
        ({"llama.rope.scaling.factor": 0.0}, 1.0),  # 0: none
        ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, 1.0),
    ],
    ids=["none", "factor_only", "linear", "scale_linear", "factor_0", "type_none"],
)
def test_rope_scaling_is_read_as_llama_cpp_reads_it(tmp_path, kv, scale):
    from inductor_fuse.gguf.reader import read_gguf

    path = str(tmp_path / "m.gguf")
    write_tiny_gguf(path, "llama", extra_kv=kv)
    assert loader.model_args(read_gguf(path), path).rope_scale == scale


def test_an_unsupported_rope_scaling_is_refused(tmp_path):
    from inductor_fuse.gguf.reader import read_gguf

    path = str(tmp_path / "m.gguf")
    write_tiny_gguf(path, "llama", extra_kv={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0})
    with pytest.raises(GGUFLoadError, match="rope scaling 'yarn' is not supported"):
        loader.model_args(read_gguf(path), path)


def test_a_bias_the_model_has_no_place_for_is_refused(tmp_path):
    # q/k/v biases in a llama file: the model has none, and dropping them would change the outputs
    import numpy as np

    path = str(tmp_path / "m.gguf")
    bias = {f"blk.0.attn_{p}.bias": np.ones(n, dtype=np.float32) for p, n in (("q", 256), ("k", 128), ("v", 128))}
    write_tiny_gguf(path, "llama", extra=bias)
    with pytest.raises(GGUFLoadError, match=r"'blk.0.attn_k.bias'.* belong to modules the llama model loads"):
        load_gguf(path, device="cpu", progress=False)


def test_a_sliding_window_pattern_of_0_is_refused(tmp_path):
    # 0 made every gemma3 layer global, silently
    from inductor_fuse.gguf.reader import read_gguf

    path = str(tmp_path / "m.gguf")
    write_tiny_gguf(path, "gemma3", extra_kv={"gemma3.attention.sliding_window_pattern": 0})
    with pytest.raises(GGUFLoadError, match=r"sliding_window_pattern is 0, not an integer >= 1"):
        loader.model_args(read_gguf(path), path)


def test_rope_freqs_must_be_finite(tmp_path):
    import numpy as np

    from inductor_fuse.gguf.reader import read_gguf

    path = str(tmp_path / "m.gguf")
    factors = np.ones(32, dtype=np.float32)
    factors[3] = np.inf
    write_tiny_gguf(path, "llama", extra={"rope_freqs.weight": factors})
    with pytest.raises(GGUFLoadError, match=r"rope_freqs.weight holds a factor that is not a finite number > 0"):
        loader.model_args(read_gguf(path), path)


@pytest.mark.parametrize("eps", ["1e-5x", True])
def test_a_norm_epsilon_that_is_no_number_names_its_key(tmp_path, monkeypatch, eps):
    # text was a bare ValueError from float(), a bool an epsilon of 1.0
    import tiny_gguf

    from inductor_fuse.gguf.reader import read_gguf

    key = "llama.attention.layer_norm_rms_epsilon"
    add = "add_bool" if isinstance(eps, bool) else "add_string"
    monkeypatch.setattr(tiny_gguf.GGUFWriter, "add_layer_norm_rms_eps", lambda self, _: getattr(self, add)(key, eps))
    path = str(tmp_path / "m.gguf")
    write_tiny_gguf(path, "llama")
    with pytest.raises(GGUFLoadError, match=rf"layer_norm_rms_epsilon is {eps!r}, not a number"):
        loader.model_args(read_gguf(path), path)
