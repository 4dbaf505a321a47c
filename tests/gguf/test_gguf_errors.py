"""Bad GGUF files: one exception type, GGUFLoadError, naming the file and the cause."""

import pytest
from tiny_gguf import write_tiny_gguf

from inductor_fuse.gguf import GGUFLoadError, load_gguf
from inductor_fuse.models import CacheTooLarge


def load(path):
    return load_gguf(path, max_seq_len=16, progress=False)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(GGUFLoadError, match="nope.gguf: no such file"):
        load(path)


def test_a_cache_past_free_memory_is_the_callers_error_not_the_files(tiny_gguf):
    with pytest.raises(CacheTooLarge, match=r"setup_caches: 1 x 10000000 positions need") as caught:
        load_gguf(tiny_gguf("llama")[0], max_seq_len=10_000_000, progress=False)
    assert not isinstance(caught.value, GGUFLoadError)


def test_error_is_a_value_error():
    assert issubclass(GGUFLoadError, ValueError)


def test_wrong_magic(tmp_path, tiny_gguf):
    path = tmp_path / "magic.gguf"
    data = bytearray(open(tiny_gguf("llama")[0], "rb").read())
    data[:4] = b"GGML"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFLoadError, match=r"magic\.gguf: not a readable GGUF file.*magic"):
        load(path)


def test_not_gguf_at_all(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("hello")
    with pytest.raises(GGUFLoadError, match="text.gguf"):
        load(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated(tmp_path, tiny_gguf, keep):
    data = open(tiny_gguf("llama")[0], "rb").read()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFLoadError, match=r"truncated\.gguf: .*(truncated|not a readable)"):
        load(path)


def test_truncated_header(tmp_path, tiny_gguf):
    data = open(tiny_gguf("llama")[0], "rb").read()
    path = tmp_path / "header.gguf"
    path.write_bytes(data[:100])
    with pytest.raises(GGUFLoadError, match=r"header\.gguf: not a readable GGUF file"):
        load(path)


def test_unknown_architecture(tmp_path, tiny_gguf):
    path = tmp_path / "mamba.gguf"
    write_tiny_gguf(path, "llama", arch_name="mamba", tokenizer=tiny_gguf("llama")[3])
    with pytest.raises(GGUFLoadError, match=r"mamba\.gguf: unsupported architecture 'mamba'"):
        load(path)


@pytest.mark.parametrize("ggml_type", ["q2_k", "iq2_xxs", "q3_k"])
def test_unsupported_tensor_type(tmp_path, tiny_gguf, ggml_type):
    path = tmp_path / f"{ggml_type}.gguf"
    write_tiny_gguf(path, "llama", formats={"down": ggml_type}, tokenizer=tiny_gguf("llama")[3])
    with pytest.raises(GGUFLoadError, match=rf"blk\.0\.ffn_down\.weight' has unsupported type {ggml_type.upper()}"):
        load(path)


def test_missing_tensor(tmp_path, tiny_gguf):
    path = tmp_path / "missing.gguf"
    write_tiny_gguf(path, "qwen3", skip=("blk.1.ffn_up.weight",), tokenizer=tiny_gguf("qwen3")[3])
    with pytest.raises(GGUFLoadError, match=r"missing\.gguf: missing tensor 'blk\.1\.ffn_up\.weight'"):
        load(path)


@pytest.mark.parametrize(
    "key, value, what",
    [
        ("expert_count", 8, "a mixture of experts"),
        ("attn_logit_softcapping", 50.0, "attention logit softcapping"),
        ("final_logit_softcapping", 30.0, "final logit softcapping"),
        ("attention.layer_norm_epsilon", 1e-5, "LayerNorm"),
        ("attention.causal", False, "non-causal attention"),
        ("use_parallel_residual", True, "parallel attention and MLP"),
    ],
)
def test_a_header_value_the_model_does_not_compute_is_refused(tmp_path, tiny_gguf, key, value, what):
    # loaded, such a file would run, with other logits than the model it describes
    path = tmp_path / "unbuilt.gguf"
    write_tiny_gguf(path, "llama", tokenizer=tiny_gguf("llama")[3], extra_kv={f"llama.{key}": value})
    with pytest.raises(GGUFLoadError, match=rf"unbuilt\.gguf: llama\.{key} = .*: {what}.* is not supported"):
        load(path)


@pytest.mark.parametrize(
    "key, value", [("expert_count", 0), ("final_logit_softcapping", 0.0), ("attention.causal", True)]
)
def test_the_same_header_values_at_their_defaults_load(tmp_path, tiny_gguf, key, value):
    path = tmp_path / "default.gguf"
    write_tiny_gguf(path, "llama", tokenizer=tiny_gguf("llama")[3], extra_kv={f"llama.{key}": value})
    assert load(path)[0].args.n_layers == 2


def test_a_llama_sliding_window_is_ignored_with_a_warning(tmp_path, tiny_gguf, caplog):
    path = tmp_path / "window.gguf"
    write_tiny_gguf(path, "llama", tokenizer=tiny_gguf("llama")[3], extra_kv={"llama.attention.sliding_window": 4096})
    with caplog.at_level("WARNING", logger="inductor_fuse"):
        model, _ = load(path)
    assert model.args.sliding_window_pattern == 0
    assert "llama.attention.sliding_window = 4096 ignored: full attention" in caplog.text
