"""w4a16_sync (W4A16 on mma.sync for 1-16 rows of x, reading the Q4_K / Q6_K planes as they are).

On the CPU: its pure-torch `reference`, which replays the kernel's tensor program (words, joins,
reshapes, permutes), against each format's dequantizer: exactly with an exact decode (this checks
the k order), within the error of bf16 / fp16 weights with the kernel's roundings; the configs and
the shapes it refuses; the INDUCTOR_FUSE_SMALL_M knob. Gluon kernels do not run under Triton's
interpreter: the kernel itself, its bias, its dispatch and a CUDA-graph replay are tested on a GPU (marked gpu)."""

import os

import pytest
import torch
from numerics import rel_err

import inductor_fuse.kernels.ops  # noqa: F401
from inductor_fuse import config
from inductor_fuse.kernels import w4a16_sync as sync
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs CUDA (and TRITON_INTERPRET unset)")

# (M, N, K, warps, row tiles per warp): 8 or 16 rows of x, one or several programs and blocks
CASES = [(1, 64, 256, 4, 1), (5, 128, 512, 4, 2), (11, 64, 768, 2, 2), (16, 256, 1024, 8, 1)]


@pytest.mark.parametrize("fmt", sync.FMTS)
@pytest.mark.parametrize(("M", "N", "K", "warps", "reps"), CASES)
def test_reference_is_the_dequantized_product(M, N, K, warps, reps, fmt):
    planes = random_planes(fmt, N, K, seed=M)
    w = FORMATS[fmt].dequantize(planes).double()
    for dt in (torch.bfloat16, torch.float16):
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dt)
        want = x.double() @ w.T
        exact = sync.reference(x, planes, fmt, warps, reps, decode_dtype=torch.float64)
        torch.testing.assert_close(exact, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        err = rel_err(sync.reference(x, planes, fmt, warps, reps), want)
        floor = rel_err(x.double() @ w.to(dt).double().T, want)  # the weights rounded to x's dtype
        assert err < 2.5 * floor, (dt, err, floor)


@pytest.mark.parametrize("fmt", sync.FMTS)
def test_reference_follows_the_column_order(fmt, monkeypatch):
    # two axes of the A tile's permutation swapped: the product is far off (the exact test above
    # would catch a wrong order)
    planes = random_planes(fmt, 64, 512, seed=1)
    x = torch.randn(3, 512).bfloat16()
    want = x.double() @ FORMATS[fmt].dequantize(planes).double().T
    perm = list(sync.A_PERM[fmt])
    perm[-1], perm[-2] = perm[-2], perm[-1]
    monkeypatch.setitem(sync.A_PERM, fmt, tuple(perm))
    assert rel_err(sync.reference(x, planes, fmt, decode_dtype=torch.float64), want) > 0.3


def test_refuses_what_it_cannot_take():
    planes = random_planes("q4_k", 48, 512)
    with pytest.raises(ValueError, match="1 <= M <= 16"):
        sync.reference(torch.randn(17, 512).bfloat16(), planes)
    with pytest.raises(ValueError, match="N % 64"):
        sync.reference(torch.randn(2, 512).bfloat16(), planes)
    with pytest.raises(ValueError, match="split 3"):
        sync.check_shapes(2, 64, 512, 4, 1, 3)
    with pytest.raises(ValueError, match="not q4_0"):
        sync.check_shapes(2, 64, 512, 4, 1, 1, "q4_0")
    assert sync.supports(16, 64, 512, "q6_k") and not sync.supports(17, 64, 512, "q6_k")
    assert not sync.supports(4, 48, 512, "q4_k") and not sync.supports(4, 64, 320, "q4_k")
    with pytest.raises(ValueError, match="bf16 / fp16"):
        sync.w4a16_sync(torch.randn(2, 512), random_planes("q4_k", 64, 512), None, "q4_k")
    with pytest.raises(ValueError, match="prefetch is 1 or 2"):
        cfg = sync.SyncConfig(prefetch=3)
        sync.w4a16_sync(torch.randn(2, 512).bfloat16(), random_planes("q4_k", 64, 512), None, "q4_k", cfg)
    for xstages in (1, 9):  # a ring of one tile would overwrite the tile being read
        with pytest.raises(ValueError, match="xstages is 0"):
            sync.SyncConfig(xstages=xstages)
    assert sync.SyncConfig().xstages == 0 and sync.SyncConfig(xstages=2).xstages == 2


def test_default_config_is_the_measured_one():
    # the H200's 132 SMs: split until 2 programs an SM, at most 4 ways; the x ring from M = 2
    sms = 132
    measured = {(28672, 4096): 1, (4096, 14336): 4, (4096, 4096): 4, (6144, 4096): 4}  # gate_up, down, o, qkv
    for (N, K), split in measured.items():
        for M in (1, 4, 8, 16):
            c = sync.default_config(M, N, K, "q4_k", sms)
            assert (c.num_warps, c.reps, c.split, c.prefetch) == (4, 1, split, 1), (N, K, M, c)
            assert c.xstages == (0 if M == 1 else 3), (N, K, M, c)
    assert sync.default_config(8, 4096, 768, "q4_k", sms).split == 1  # 3 blocks: no divisor
    assert sync.default_config(8, 2048, 512, "q4_k", sms).split == 2  # 2 blocks
    assert sync.default_config(8, 128256, 4096, "q6_k", sms).split == 1
    for N, K in ((6144, 4096), (4096, 14336), (640, 2048), (64, 1280)):
        c = sync.default_config(8, N, K, "q4_k", sms)
        assert (K // 256) % c.split == 0 and sync.supports(8, N, K, "q4_k", c)


def test_small_m_knob_selects_the_kernel():
    assert config.from_env({"INDUCTOR_FUSE_SMALL_M": "sync"}).small_m == "sync"
    assert config.from_env({"INDUCTOR_FUSE_SMALL_M": "off"}).small_m == "off"
    assert config.Settings().small_m == "auto"
    with pytest.raises(ValueError, match="INDUCTOR_FUSE_SMALL_M"):
        config.Settings(small_m="fast")


def test_dispatch_takes_the_kernel_where_it_was_measured_fastest():
    from inductor_fuse.kernels.dispatch import wants_w4a16_sync
    from inductor_fuse.kernels.registry import kernel_spec

    def rows(fmt, dtype=torch.bfloat16, **knobs):
        settings = config.Settings(**knobs)
        return [M for M in range(1, 65) if wants_w4a16_sync(kernel_spec(fmt), M, dtype, settings)]

    assert rows("q4_k") == rows("q4_k", torch.float16) == list(range(3, 17))  # auto: the matvec at M = 1, 2
    assert rows("q6_k") == rows("q6_k", torch.float16) == list(range(3, 17))  # the matvec at M = 1, 2
    assert rows("q4_k", torch.float32) == []  # float32 x: the matvec, then int8_mma
    assert rows("q8_0") == []  # not measured
    assert rows("q4_k", small_m="sync") == rows("q6_k", small_m="sync") == list(range(1, 17))
    assert rows("q4_k", small_m="off") == []
    assert rows("q4_k", exact_matvec=True) == rows("q4_k", small_m="sync", exact_matvec=True) == []


def test_kernel_for_names_the_kernel_of_each_path():
    from inductor_fuse.kernels.dispatch import kernel_for

    bf16, f32 = torch.bfloat16, torch.float32
    auto = config.Settings()
    assert kernel_for("q4_k", 1, 4096, 4096, bf16, auto) == "matvec"
    assert [kernel_for(f, 2, 4096, 4096, bf16, auto) for f in ("q4_k", "q6_k")] == ["matvec"] * 2
    assert [kernel_for(f, 3, 4096, 4096, bf16, auto) for f in ("q4_k", "q6_k")] == ["w4a16_sync"] * 2
    assert kernel_for("q6_k", 3, 4096, 4096, bf16, config.Settings(small_m="off")) == "matvec"
    assert kernel_for("q4_k", 3, 1000, 4096, bf16, auto) == "matvec"  # N % 64: not a shape it takes
    assert kernel_for("q4_k", 3, 4096, 4096, f32, auto) == "matvec"  # float32 x
    assert kernel_for("q4_k", 8, 4096, 4096, f32, auto) == "int8_mma"
    assert kernel_for("q4_k", 17, 4096, 4096, bf16, auto) == "w4a16_mma"
    assert kernel_for("q4_k", 3, 4096, 4096, bf16, config.Settings(small_m="off")) == "matvec"
    assert kernel_for("q4_k", 8, 4096, 4096, bf16, config.Settings(small_m="off")) == "w4a16_mma"
    assert kernel_for("q4_k", 1, 4096, 4096, bf16, config.Settings(exact_matvec=True)) == "qgemm"
    assert kernel_for("q6_k", 512, 4096, 4096, bf16, auto) == "dequant_mm"
    assert kernel_for("q6_k", 512, 4096, 4096, bf16, config.Settings(gemm="fused")) == "qgemm"


def test_a_triton_without_the_kernel_falls_back_with_one_warning(monkeypatch, caplog):
    import builtins
    import sys

    from inductor_fuse.kernels import dispatch

    real = builtins.__import__

    def no_gluon(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and fromlist and "w4a16_sync" in fromlist:
            raise ImportError("no Gluon in this Triton")
        return real(name, globals, locals, fromlist, level)

    dispatch._w4a16_sync_module.cache_clear()
    monkeypatch.delitem(sys.modules, "inductor_fuse.kernels.w4a16_sync")
    monkeypatch.setattr(builtins, "__import__", no_gluon)
    try:
        with caplog.at_level("WARNING", logger="inductor_fuse"):
            assert dispatch._w4a16_sync_module() is None and dispatch._w4a16_sync_module() is None
        assert [r.getMessage() for r in caplog.records if "w4a16_sync unavailable" in r.getMessage()] == [
            "inductor_fuse: w4a16_sync unavailable with this Triton (no Gluon in this Triton); w4a16_mma runs instead"
        ]  # once, however many calls
    finally:
        dispatch._w4a16_sync_module.cache_clear()
    monkeypatch.undo()
    assert dispatch._w4a16_sync_module() is sync


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("fmt", sync.FMTS)
@pytest.mark.parametrize(("M", "N", "K", "warps", "reps"), CASES + [(8, 512, 4096, 4, 1), (3, 256, 2048, 2, 2)])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_kernel_matches_its_reference_cuda(M, N, K, warps, reps, dt, fmt):
    # the output's rounding to x's dtype is the error left (about 1e-3 bf16, 1.4e-4 fp16, in norm)
    planes = random_planes(fmt, N, K, "cuda", seed=M)
    x = torch.randn(M, K, device="cuda").to(dt)
    want = sync.reference(x, planes, fmt, warps, reps)
    runs = [(1, 1, 0), (2, 1, 0), (4, 1, 0), (1, 2, 0), (2, 2, 0), (1, 1, 2), (2, 1, 3), (4, 2, 4)]  # x's ring last
    for split, prefetch, xstages in runs:
        if (K // 256) % split:
            continue
        cfg = sync.SyncConfig(warps, reps, split, prefetch=prefetch, xstages=xstages)
        got = sync.w4a16_sync(x, planes, None, fmt, cfg)
        assert got.dtype == dt and got.shape == (M, N)
        err = rel_err(got, want)
        assert err < (2e-3 if dt == torch.bfloat16 else 3e-4), (split, prefetch, xstages, err)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("fmt", sync.FMTS)
def test_bias_and_dispatch_cuda(fmt, monkeypatch):
    """The bias (added by the store, or by splitk_reduce); qlinear and glu_qlinear run the kernel
    with INDUCTOR_FUSE_SMALL_M=sync for M <= 16 only; by default (auto) M = 6 runs it too (M = 3..16), M = 1
    the matvec; with off neither."""
    N, K = 1024, 4096
    planes = random_planes(fmt, N, K, "cuda", seed=7)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(6, K, device="cuda", dtype=torch.bfloat16)
    want = sync.reference(x, planes, fmt) + bias.double()
    for split in (1, 4):
        got = sync.w4a16_sync(x, planes, bias, fmt, sync.SyncConfig(split=split))
        assert rel_err(got, want) < 2e-3, split
    calls = []
    real = sync.w4a16_sync
    monkeypatch.setattr(sync, "w4a16_sync", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    with config.patch(small_m="off"):
        before = torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt)
    assert calls == []
    auto = torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt)
    assert calls == [6] and rel_err(auto, want) < 2e-3
    one = torch.ops.inductor_fuse.qlinear(x[:1], planes, bias, fmt)
    assert calls == [6] and rel_err(one, want[:1]) < 1.5e-2  # M = 1: the matvec, x rounded to int8
    calls.clear()
    with config.patch(small_m="sync"):
        got = torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt)
        assert calls == [6] and rel_err(got, want) < 2e-3
        x17 = torch.randn(17, K, device="cuda", dtype=torch.bfloat16)
        torch.ops.inductor_fuse.qlinear(x17, planes, bias, fmt)
        assert calls == [6]  # 17 rows: the usual dispatch
        glu = torch.ops.inductor_fuse.glu_qlinear(x, planes, None, fmt, "silu")
        assert calls == [6, 6]
    y = sync.reference(x, planes, fmt).view(6, N // 2, 2)
    assert rel_err(glu, torch.nn.functional.silu(y[..., 0]) * y[..., 1]) < 5e-3
    assert rel_err(before, want) < 1.5e-2  # (w4a16_mma, Q6_K's matvec: x rounded to int8)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("fmt", sync.FMTS)
def test_cuda_graph_capture_cuda(fmt):
    # warmed up (compiled) first, as every decode step is before capture; the split's partials
    # buffer comes from the graph's pool; the last case: the default config (split 4, the x ring)
    planes = random_planes(fmt, 4096, 4096, "cuda", seed=5)
    for M, cfg in ((1, sync.SyncConfig(split=4)), (16, sync.SyncConfig(split=1)), (8, None)):
        x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
        sync.w4a16_sync(x, planes, None, fmt, cfg)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = sync.w4a16_sync(x, planes, None, fmt, cfg)
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, sync.w4a16_sync(x, planes, None, fmt, cfg), rtol=0, atol=0)
