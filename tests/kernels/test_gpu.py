"""GPU tests at full size (run with INDUCTOR_FUSE_GPU_TESTS=1 on a CUDA machine)."""

import dataclasses
import os

import pytest
import torch
from numerics import rel_err

import inductor_fuse.kernels.ops  # noqa: F401
from inductor_fuse import config
from inductor_fuse.kernels._common import act_quant_reference
from inductor_fuse.kernels.dispatch import kernel_for
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="needs CUDA (and TRITON_INTERPRET unset)")]


@pytest.mark.parametrize("fmt", list(KERNELS))
@pytest.mark.parametrize("N,K", [(4096, 14336), (6144, 4096), (1000, 2048)])
@pytest.mark.parametrize("M", [1, 3, 8, 17, 300])
def test_qlinear_cuda(fmt, N, K, M):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(N + K + M)
    planes = random_planes(fmt, N, K, dev, seed=N + M)
    wd = FORMATS[fmt].dequantize(planes)
    x = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
    bias = torch.randn(N, device=dev, dtype=torch.bfloat16)
    out = torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt)
    torch.cuda.synchronize()
    ref = x.float() @ wd.T + bias.float()
    assert out.dtype == torch.bfloat16 and out.shape == (M, N)
    assert torch.isfinite(out).all()
    err = rel_err(out.float(), ref)
    assert err < 1.5e-2, f"{fmt} M={M}: rel err {err:.3e}"
    if kernel_for(fmt, M, N, K, x.dtype) == "matvec":  # W4A8: exact up to fp32 rounding against the int8 x
        refq = act_quant_reference(x.float()) @ wd.T + bias.float()
        assert rel_err(out.float(), refq) < 5e-3


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k"])
@pytest.mark.parametrize("N,K", [(4096, 14336), (6144, 4096), (1000, 2048)])
@pytest.mark.parametrize("M", [2, 5, 16, 33, 64])
def test_int8_mma_cuda(fmt, N, K, M):
    """int8_mma (W4A8 on the int8 tensor cores) at full size against the dequantized-activation
    reference: exact integer dots, so float32 rounding only."""
    from inductor_fuse.kernels.int8_mma import int8_mma

    dev = "cuda"
    planes = random_planes(fmt, N, K, dev, seed=N + M)
    wd = FORMATS[fmt].dequantize(planes)
    x = torch.randn(M, K, device=dev, generator=torch.Generator(device=dev).manual_seed(M), dtype=torch.bfloat16)
    bias = torch.randn(N, device=dev, dtype=torch.bfloat16)
    out = int8_mma(x, planes, bias, fmt)
    torch.cuda.synchronize()
    refq = act_quant_reference(x.float()) @ wd.T + bias.float()
    assert out.dtype == torch.bfloat16 and out.shape == (M, N) and torch.isfinite(out).all()
    assert rel_err(out.float(), refq) < 5e-3, f"{fmt} M={M}: rel err {rel_err(out.float(), refq):.3e}"


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k"])
@pytest.mark.parametrize("N,K", [(4096, 14336), (6144, 4096), (1000, 2048)])
@pytest.mark.parametrize("M", [7, 16, 33, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w4a16_mma_cuda(fmt, N, K, M, dtype):
    """w4a16_mma's packed decode (inline asm), Q4_K and Q6_K, at full size against a float64 oracle on the
    dequantized weights: within 2x the error of F.linear on the weights dequantized to x's dtype
    (the scale and min are rounded to it before the fma); qlinear runs it at these M (bit-identical),
    at M <= 16 with small_m "off" (by default w4a16_sync takes 3..16 rows: tests/kernels/test_w4a16_sync.py)."""
    from inductor_fuse.kernels.w4a16_mma import w4a16_mma

    dev = "cuda"
    planes = random_planes(fmt, N, K, dev, seed=N + M)
    wd = FORMATS[fmt].dequantize(planes).double()
    x = torch.randn(M, K, device=dev, generator=torch.Generator(device=dev).manual_seed(M), dtype=dtype)
    bias = torch.randn(N, device=dev, dtype=dtype)
    out = w4a16_mma(x, planes, bias, fmt)
    ref = x.double() @ wd.T + bias.double()
    floor = rel_err(torch.nn.functional.linear(x, wd.to(dtype), bias), ref)
    assert out.dtype == dtype and out.shape == (M, N) and torch.isfinite(out).all()
    assert rel_err(out, ref) < 2 * floor, f"{fmt} M={M} {dtype}: {rel_err(out, ref):.3e} against {floor:.3e}"
    with config.patch(small_m="off"):
        torch.testing.assert_close(torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt), out, rtol=0, atol=0)


@pytest.mark.parametrize("fmt,M,split_k", [("q4_k", 16, 5), ("q4_k", 64, 3), ("q6_k", 16, 5)])
def test_w4a16_mma_unrolled_cuda(fmt, M, split_k):
    """W4A16Config.unroll = 2 (tl.range's loop_unroll_factor), splits with odd and even step counts
    (K = 4096: 64 Q4_K units, 32 Q6_K): the same result as the loop not unrolled, to rounding of the
    float32 sums."""
    from inductor_fuse.kernels.w4a16_mma import default_config, w4a16_mma

    planes = random_planes(fmt, 4096, 4096, "cuda", seed=M)
    x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
    base = dataclasses.replace(default_config(fmt, M), split_k=split_k)
    want = w4a16_mma(x, planes, None, fmt, config=base)
    got = w4a16_mma(x, planes, None, fmt, config=dataclasses.replace(base, unroll=2))
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


def test_cuda_graph_capture():
    dev = "cuda"
    fmt, N, K = "q4_k", 4096, 4096
    planes = random_planes(fmt, N, K, dev)
    for M in (1, 4, 64):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        ref = torch.ops.inductor_fuse.qlinear(x, planes, None, fmt)  # warm up (tunes)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = torch.ops.inductor_fuse.qlinear(x, planes, None, fmt)
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        ref = torch.ops.inductor_fuse.qlinear(x, planes, None, fmt)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_torch_compile_reduce_overhead():
    # the real use: the op inside a compiled decode step replayed as a CUDA graph
    dev = "cuda"
    fmt, N, K = "q4_k", 4096, 4096
    planes = random_planes(fmt, N, K, dev, seed=3)
    bias = torch.randn(N, device=dev, dtype=torch.bfloat16)

    def f(x):
        return torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt) * 2.0

    cf = torch.compile(f, mode="reduce-overhead", fullgraph=True)  # as users compile: no dynamo reset before
    for M in (1, 1, 1, 4, 4, 4, 64, 64):
        x = torch.randn(1, M, K, device=dev, dtype=torch.bfloat16)
        got = cf(x).clone()
        torch.testing.assert_close(got, f(x), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "q8_0", "int4_g32"])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("M", [1, 4, 300])
def test_glu_qlinear_cuda(fmt, act, M):
    """glu_qlinear at Llama-3-8B's MLP size (I 14336, K 4096): the GLU epilogue (matvec) and the
    GEMM path against act(x W_gate^T) * (x W_up^T) on the dequantized weights."""
    from inductor_fuse.quant.op import glu_act

    dev, inter, K = "cuda", 14336, 4096
    planes = random_planes(fmt, 2 * inter, K, dev, seed=M)  # rows interleave gate and up
    wd = FORMATS[fmt].dequantize(planes)
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=torch.Generator(device=dev).manual_seed(M))
    out = torch.ops.inductor_fuse.glu_qlinear(x, planes, None, fmt, act)
    xr = act_quant_reference(x.float()) if kernel_for(fmt, M, 2 * inter, K, x.dtype) == "matvec" else x.float()
    ref = glu_act(xr @ wd.T, act)
    assert out.shape == (M, inter) and out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 1e-2, f"{fmt} {act} M={M}"


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compiled_prefill_with_cuda_graphs_then_decode(tmp_path, arch):
    # A tiny GGUF model on the GPU as examples/decode.py runs it: the prompt through
    # compile_prefill with CUDA graphs (padded to a power of two), then 4 decode steps, also
    # replayed as a CUDA graph; prompts of 5, 13, 40 and 13 tokens, one after the other's decode
    # (graphs of both functions alternate). Against the eager model, teacher-forced: the prompt's
    # KV cache entries, and each token within a whisker of the eager logits' max (W4A8 and float
    # GEMMs round differently, so an exact argmax would fail on near-ties).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "gguf"))
    from tiny_gguf import write_tiny_gguf

    from inductor_fuse.backend import make_backend
    from inductor_fuse.gguf import load_gguf
    from inductor_fuse.models.generate import compile_prefill, decode_one_token

    path = tmp_path / f"{arch}.gguf"
    write_tiny_gguf(path, arch)
    model, _ = load_gguf(str(path), device="cuda", max_seq_len=96, dtype=torch.float32, progress=False)
    prompt_fn = compile_prefill(make_backend("reduce-overhead"))
    step = torch.compile(decode_one_token, backend=make_backend("reduce-overhead"), fullgraph=True)
    caches = [m.attention.kv_cache for m in model.layers]

    def near_max(logits, token):
        return bool(logits[0, token] >= logits.max() - 0.02 * logits.abs().max())

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in (5, 13, 40, 13):
            tokens = torch.randint(1, model.args.vocab_size, (1, n), generator=gen).cuda()
            pos = torch.arange(n, device="cuda")
            token = prompt_fn(model, tokens, pos)
            got = torch.cat(
                [c.k_cache[:, :, :n].clone() for c in caches] + [c.v_cache[:, :, :n].clone() for c in caches]
            )
            logits = model(tokens, pos, live=n)[:, -1]  # eager: the same positions again
            want = torch.cat([c.k_cache[:, :, :n] for c in caches] + [c.v_cache[:, :, :n] for c in caches])
            assert rel_err(got, want) < 2e-2, (n, rel_err(got, want))
            assert near_max(logits, int(token)), (n, int(token), logits.topk(3))
            for p in range(n, n + 4):
                t, at = token.view(1, 1).clone(), torch.tensor([p], device="cuda")
                token = step(model, t, at).clone()
                assert near_max(model(t, at)[:, -1], int(token)), (n, p)


def test_decode_step_norms_are_one_pass_reductions():
    # Gemma 3's QK-norm (head_dim 256) fused with rope and the cache write must compile to a
    # persistent reduction (`triton_per_`): a looped one (`triton_red_`) has an autotuned block size,
    # and one compile picked a small block, 7x slower (docs/design.md). The rope table's layout
    # decides it (unit-stride cos / sin rows), so any kernel that reduces a norm here is persistent.
    from torch._inductor.utils import run_and_get_code

    from inductor_fuse.backend import make_backend
    from inductor_fuse.models import ModelArgs, Transformer
    from inductor_fuse.models.generate import decode_one_token

    args = ModelArgs(vocab_size=4096, dim=256, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=256,
                     intermediate_size=512, norm_eps=1e-6, act="gelu_tanh", qk_norm=True, sandwich_norm=True,
                     embed_scale=True, sliding_window=8, sliding_window_pattern=2, tie_embeddings=True)  # fmt: skip
    with torch.device("cuda"):
        model = Transformer(args).to(torch.bfloat16)
    model.setup_caches(1, 64)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]], device="cuda"), torch.arange(3, device="cuda"))
        step = torch.compile(decode_one_token, backend=make_backend("default"), fullgraph=True)
        t, at = torch.tensor([[4]], device="cuda"), torch.tensor([3], device="cuda")
        token, (code, *_) = run_and_get_code(step, model, t, at)
        logits = model(t, at)[0, -1].float()  # eager, the same position again
    looped = sorted(set(n for n in code.split() if n.startswith("triton_red_fused") and "mean" in n))
    assert "mean" in code and not looped, looped
    assert logits[int(token)] >= logits.max() - 0.02 * logits.abs().max()  # bf16 rounding: near-ties


@pytest.mark.parametrize("K", [640, 2560, 5376, 8224])  # Gemma 3 270M, 4B, 27B; a row past one block
@pytest.mark.parametrize("M", [1, 5])
def test_sandwich_norm_kernel_against_the_reference(M, K):
    """add_rmsnorm_quantize_act with the addend's own norm (Gemma 3's post-norm + residual add +
    next pre-norm, one launch) on the GPU against the CPU op (the pure-torch reference)."""
    g = torch.Generator().manual_seed(K + M)
    a = torch.randn(M, K, generator=g).bfloat16()
    o = (torch.randn(M, K, generator=g) * 30).bfloat16()
    w, w_post = ((torch.randn(K, generator=g) * 0.3).bfloat16() for _ in range(2))
    args = (1e-6, 1.0, False, False, 8, w_post.cuda(), 1e-6, 1.0, False)
    op = torch.ops.inductor_fuse.add_rmsnorm_quantize_act
    got = op(a.cuda(), o.cuda(), w.cuda(), *args)
    want = op(a, o, w, *args[:5], w_post, *args[6:])
    for name, x, y in zip(("s", "y"), got[:2], want[:2]):
        assert rel_err(x.cpu().float(), y.float()) < 1e-2, name
    assert (got[2].cpu().view(torch.int8).int() - want[2].view(torch.int8).int()).abs().max() <= 1


@pytest.mark.parametrize(
    "fmt,I,K", [("q4_k", 8192, 2048), ("q8_0", 2048, 640), ("q4_k", 14336, 4096), ("q6_k", 96, 256)]
)
@pytest.mark.parametrize("M", [1, 4])
def test_glu_matvec_quantizes_its_output(fmt, I, K, M):
    """The GLU matvec that quantizes its output (INDUCTOR_FUSE_GLU_QUANT=1): y the GLU matvec's up to
    float rounding (its programs sum in another order: on an H200, q8_0 at M = 4 differed in the
    last bit), the int8 buffers bit for bit the act_quant kernel's of the y it returned."""
    from inductor_fuse import config
    from inductor_fuse.kernels import ops

    # random plane bytes on the GPU: quantizing a 28672 x 4096 weight on the host took minutes
    planes = random_planes(fmt, 2 * I, K, "cuda", seed=I + M)
    g = torch.Generator().manual_seed(I + M)
    x = torch.randn(M, K, generator=g).bfloat16().cuda()
    il = KERNELS[fmt].interleave
    xa = list(torch.ops.inductor_fuse.quantize_act(x, il, 8))
    args = (x, planes, None, fmt, "gelu_tanh", xa, il, 8, False, 8)
    with config.patch(glu_quant=True):
        fused = ops._glu_qlinear_q8_quantize_act_cuda(*args)
    with config.patch(glu_quant=False):
        plain = ops._glu_qlinear_q8_quantize_act_cuda(*args)
    assert rel_err(fused[0].float(), plain[0].float()) < 1e-2
    for name, a, b in zip(
        ("yq", "yd", "ys32", "ys16"), fused[1:], torch.ops.inductor_fuse.quantize_act(fused[0], False, 8)
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("early, l2", [(False, 0), (True, 0), (True, 4096)])
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "q8_0"])
def test_programmatic_dependent_launch_same_bits(fmt, early, l2):
    """config.settings.pdl: a decode layer's chain (add + RMSNorm + act_quant in one kernel, a
    matvec, act_quant, a matvec whose input the kernel before it has just written, the next
    norm) captured in a CUDA graph, replayed with new inputs each time: the same bits as without
    programmatic dependent launch, with and without the matvec's early trigger (pdl_early), and with
    its weights asked of L2 before its wait (l2_prefetch). A matvec that read x before its producer
    finished would differ."""
    dev, D, inter = "cuda", 4096, 14336
    w_up = random_planes(fmt, inter, D, dev, seed=1)
    w_down = random_planes(fmt, D, inter, dev, seed=2)
    norm_w = torch.rand(D, device=dev, dtype=torch.bfloat16) + 0.5
    ops = torch.ops.inductor_fuse
    interleave = KERNELS[fmt].interleave

    def layer(h, r):
        s, y, *xa = ops.add_rmsnorm_quantize_act(h, r, norm_w, 1e-5, 0.0, True, interleave, 1)
        u = ops.qlinear_q8(y, w_up, None, fmt, xa, interleave, 1)
        ua = list(ops.quantize_act(u, interleave, 1))
        d = ops.qlinear_q8(u, w_down, None, fmt, ua, interleave, 1)
        s2, y2, *_ = ops.add_rmsnorm_quantize_act(s, d, norm_w, 1e-5, 0.0, True, interleave, 1)
        return u, d, y2

    g = torch.Generator(device=dev).manual_seed(0)
    inputs = [(torch.randn(1, D, device=dev, dtype=torch.bfloat16, generator=g),
               torch.randn(1, D, device=dev, dtype=torch.bfloat16, generator=g)) for _ in range(8)]  # fmt: skip
    with config.patch(pdl=False):
        want = [[t.clone() for t in layer(h, r)] for h, r in inputs]
    with config.patch(pdl=True, pdl_early=early, l2_prefetch=l2):
        h0, r0 = (t.clone() for t in inputs[0])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(h0, r0)  # warm up (compiles the PDL variants)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = layer(h0, r0)
        for rep in range(3):
            for (h, r), w in zip(inputs, want, strict=True):
                h0.copy_(h)
                r0.copy_(r)
                graph.replay()
                for got, ref in zip(outs, w, strict=True):
                    assert torch.equal(got, ref), (fmt, rep)
        eager = layer(*inputs[1])
        for got, ref in zip(eager, want[1], strict=True):
            assert torch.equal(got, ref), fmt
