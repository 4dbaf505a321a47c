"""load_gguf on tiny GGUF files whose linear weights are Q4_0 and IQ4_XS: the weights stay in those
formats and the logits equal those of transformers' float model built from the dequantized weights;
a row that is not a whole number of blocks is a clear GGUFLoadError."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from numerics import rel_err
from tiny_gguf import hf_reference, write_tiny_gguf

from inductor_fuse.gguf import GGUFLoadError, load_gguf

PROMPT = "Once upon a time, the capital of France is Paris. def f(x):\n    return x"
RTOL = 1e-3  # relative error (Frobenius) in float32

# every linear in Q4_0 or IQ4_XS (K = 256 for all but down: 512); the embedding and the tied or
# separate output projection too
FORMATS = {
    "llama": dict(
        q="iq4_xs",
        k="q4_0",
        v="iq4_xs",
        o="q4_0",
        gate="iq4_xs",
        up="q4_0",
        down="iq4_xs",
        embd="q4_0",
        output="iq4_xs",
    ),
    "qwen2": dict(
        q="q4_0", k="iq4_xs", v="q4_0", o="iq4_xs", gate="q4_0", up="iq4_xs", down="q4_0", embd="iq4_xs", output=None
    ),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cache = {}

    def get(arch):
        if arch not in cache:
            path = tmp_path_factory.mktemp("gguf") / f"tiny-{arch}-q4_0-iq4_xs.gguf"
            sd, config, _ = write_tiny_gguf(path, arch, formats=FORMATS[arch])
            model, tok = load_gguf(path, max_seq_len=64, progress=False)
            cache[arch] = (model, tok, hf_reference(arch, sd, config))
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", list(FORMATS))
def test_weights_stay_in_their_formats(loaded, arch):
    model, _, _ = loaded(arch)
    f = FORMATS[arch]
    attn, mlp = model.layers[1].attention, model.layers[1].feed_forward
    got = [m.fmt for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)]
    assert got == [f["q"], f["k"], f["v"], f["o"]]
    assert [m.fmt for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)] == [f["gate"], f["up"], f["down"]]
    assert model.output.fmt == (f["output"] or f["embd"])


@pytest.mark.parametrize("arch", list(FORMATS))
@torch.no_grad()
def test_prefill_logits_match_float_reference(loaded, arch):
    model, tok, ref = loaded(arch)
    ids = tok.encode(PROMPT)
    x = torch.tensor([ids])
    ours = model(x, torch.arange(len(ids)))
    theirs = ref(x).logits
    assert ours.shape == theirs.shape
    err = rel_err(ours, theirs)
    assert err < RTOL, f"{arch}: relative error {err:.2e}"


@pytest.mark.parametrize("arch", list(FORMATS))
@torch.no_grad()
def test_decode_step_matches_float_reference(loaded, arch):
    model, tok, ref = loaded(arch)
    ids = tok.encode(PROMPT)[:10]
    model(torch.tensor([ids]), torch.arange(len(ids)))
    nxt = int(ref(torch.tensor([ids])).logits[0, -1].argmax())
    step = model(torch.tensor([[nxt]]), torch.tensor([len(ids)]))[0, -1]
    err = rel_err(step, ref(torch.tensor([ids + [nxt]])).logits[0, -1])
    assert err < RTOL, f"{arch}: relative error {err:.2e}"


@pytest.mark.parametrize("ggml_type, k", [(GGMLQuantizationType.IQ4_XS, 128), (GGMLQuantizationType.Q4_0, 48)])
def test_row_not_a_whole_number_of_blocks(tmp_path, ggml_type, k):
    # a tensor declaring K elements per row that its type's blocks cannot hold: refused before any
    # byte is read as a weight
    path = tmp_path / "bad-k.gguf"
    w = GGUFWriter(path, "llama")
    raw = np.zeros((4, 100), dtype=np.int8)  # not uint8: the writer then keeps raw_shape as given
    w.add_tensor("token_embd.weight", raw, raw_shape=(4, k), raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    block = {GGMLQuantizationType.IQ4_XS: 256, GGMLQuantizationType.Q4_0: 32}[ggml_type]
    with pytest.raises(GGUFLoadError, match=f"row of {k} elements is not a multiple of the block size {block}"):
        load_gguf(path, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("exact", [False, True], ids=["w4a8", "exact"])
@pytest.mark.parametrize("arch", list(FORMATS))
@torch.no_grad()
def test_cuda_kernels_match_float_reference(tmp_path, arch, exact):
    # The same files on the GPU: prefill (M = prompt length: the GEMM) and a decode step (M = 1:
    # the W4A8 matvec, int8 activations; exact=True sends every M to the float GEMM instead).
    from inductor_fuse import config

    path = tmp_path / f"tiny-{arch}.gguf"
    sd, cfg, _ = write_tiny_gguf(path, arch, formats=FORMATS[arch])
    model, tok = load_gguf(path, device="cuda", dtype=torch.float32, max_seq_len=64, progress=False)
    ref = hf_reference(arch, sd, cfg)
    ids = tok.encode(PROMPT)
    with config.patch(exact_matvec=exact):
        prefill = model(torch.tensor([ids], device="cuda"), torch.arange(len(ids), device="cuda"))
        model.setup_caches(1, 64)
        model(torch.tensor([ids[:10]], device="cuda"), torch.arange(10, device="cuda"))
        step = model(torch.tensor([[ids[10]]], device="cuda"), torch.tensor([10], device="cuda"))[0, -1]
    err_prefill = rel_err(prefill.cpu(), ref(torch.tensor([ids])).logits)
    err_step = rel_err(step.cpu(), ref(torch.tensor([ids[:11]])).logits[0, -1])
    print(f"{arch} {'exact' if exact else 'w4a8'}: prefill rel err {err_prefill:.2e}, decode step {err_step:.2e}")
    # prefill: the GEMM, ieee float32 dots; the step: int8 activations (one scale per 32) in the
    # W4A8 matvec, float ones with exact=True
    assert err_prefill < RTOL, f"{arch}: prefill relative error {err_prefill:.2e}"
    assert err_step < (RTOL if exact else 3e-2), f"{arch}: decode step relative error {err_step:.2e}"
