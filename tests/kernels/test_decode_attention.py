"""torch.ops.inductor_fuse.decode_attention: the CPU reference and the split-K Triton kernel against an
independent float64 attention and stock F.scaled_dot_product_attention. The kernel tests run on the
CPU under TRITON_INTERPRET=1, and on the GPU with INDUCTOR_FUSE_GPU_TESTS=1 (plus a full-size one)."""

import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err
from torch._subclasses.fake_tensor import FakeTensorMode

import inductor_fuse.attention  # noqa: F401 -- defines the op
from inductor_fuse.kernels import _common
from inductor_fuse.kernels import decode_attention as kernel
from inductor_fuse.kernels._common import interpreting

decode_attention = torch.ops.inductor_fuse.decode_attention
GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
# the kernel runs on the CPU under TRITON_INTERPRET=1, else on the GPU (INDUCTOR_FUSE_GPU_TESTS=1)
kernel_runs = pytest.mark.skipif(not (interpreting() or GPU), reason="needs TRITON_INTERPRET=1 or a GPU")


def run_kernel(q, k, v, mask, scale, softcap, num_splits=None):
    """The kernel's launcher on the interpreter's CPU tensors or on GPU copies; the result on the CPU."""
    dev = "cpu" if interpreting() else "cuda"
    q, k, v, mask = (t.to(dev) for t in (q, k, v, mask))
    return kernel.decode_attention_cuda(q, k, v, mask, scale, softcap, num_splits=num_splits).cpu()


TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}  # atol = rtol, |v| ~ 1


def attention_fp64(q, k, v, mask, scale, softcap):
    """Masked softmax attention in float64, GQA by repeating KV heads; an all-masked row gives 0."""
    G = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(G, dim=1)
    vv = v.double().repeat_interleave(G, dim=1)
    z = q.double() @ kk.transpose(-1, -2) * scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    p = torch.softmax(torch.where(mask, z, float("-inf")), dim=-1)
    p = torch.where(mask.any(dim=-1, keepdim=True), p, 0.0)  # softmax of an all -inf row is NaN
    return p @ vv


def make_mask(kind, B, Hq, S, T, live, window=50, seed=0):
    """bool mask [1|B, 1|Hq, S, T]. causal / window: the S new tokens sit at positions live - S ..
    live - 1 of a T-long buffer (window: each sees its last `window` positions, itself included);
    random: a random mask per batch element (random_per_head: per head too), positions 128..255
    dead (a whole tile, a whole split of 128)."""
    pos = torch.arange(live - S, live)[:, None]
    t = torch.arange(T)[None, :]
    if kind == "causal":
        return (t <= pos)[None, None]
    if kind == "window":
        return ((t <= pos) & (pos - t < window))[None, None]
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, Hq if kind == "random_per_head" else 1, S, T, generator=g) < 0.3
    m[..., 128:256] = False
    return m


def make_qkv(B, Hq, Hkv, S, D, T, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype) for h, n in ((Hq, S), (Hkv, T), (Hkv, T)))
    return q, k, v


def assert_close(out, ref, dtype, what):
    tol = TOL[dtype]
    diff = (out.double() - ref.double()).abs()
    bad = (diff > tol + tol * ref.double().abs()).nonzero()[:8].tolist()
    assert not bad, f"{what}: max abs err {diff.max().item():.3e}; first mismatching [b, h, s, d]: {bad}"


def assert_matches_sdpa(out, q, k, v, mask, scale, dtype, what):
    """Against stock SDPA (float32) on the rows whose mask is not all False."""
    ref = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    rows = mask.expand(q.shape[0], q.shape[1], -1, -1).any(dim=-1)  # [B, Hq, S]
    assert rows.any()
    assert_close(out[rows], ref[rows], dtype, what + " vs SDPA")


# name: (B, Hq, Hkv, S, D, T, live, mask kind, dtype, softcap, num_splits)
CASES = {
    "mha-causal": (1, 4, 4, 1, 64, 256, 150, "causal", torch.float32, 0.0, None),
    "gqa4-window-spec": (2, 8, 2, 4, 128, 256, 230, "window", torch.bfloat16, 0.0, 2),
    "gqa8-random-softcap": (2, 8, 1, 4, 64, 200, 200, "random", torch.float16, 30.0, 2),
    "gemma3_270m-causal": (1, 4, 1, 1, 256, 256, 100, "causal", torch.bfloat16, 0.0, 4),
    "gemma3_270m-window-spec": (1, 4, 1, 4, 256, 192, 170, "window", torch.float32, 0.0, 1),
    "gqa4-random_per_head-softcap": (2, 8, 2, 1, 128, 130, 130, "random_per_head", torch.float32, 50.0, 2),
    "gqa8-causal-32rows": (1, 16, 2, 4, 64, 256, 77, "causal", torch.bfloat16, 0.0, None),
    "gqa8-causal-2rowblocks": (1, 8, 1, 16, 64, 256, 200, "causal", torch.float32, 0.0, 2),
}


def _case(name):
    B, Hq, Hkv, S, D, T, live, kind, dtype, softcap, splits = CASES[name]
    q, k, v = make_qkv(B, Hq, Hkv, S, D, T, dtype, seed=len(name))
    mask = make_mask(kind, B, Hq, S, T, live, seed=len(name))
    return q, k, v, mask, D**-0.5, softcap, splits


@pytest.mark.parametrize("name", list(CASES))
def test_op_on_cpu_matches_reference_and_sdpa(name):
    q, k, v, mask, scale, softcap, _ = _case(name)
    out = decode_attention(q, k, v, mask, scale, softcap)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, attention_fp64(q, k, v, mask, scale, softcap), q.dtype, f"{name}: op (CPU reference)")
    if softcap == 0:
        assert_matches_sdpa(out, q, k, v, mask, scale, q.dtype, f"{name}: op (CPU reference)")


@kernel_runs
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference_and_sdpa(name):
    q, k, v, mask, scale, softcap, splits = _case(name)
    out = run_kernel(q, k, v, mask, scale, softcap, num_splits=splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, attention_fp64(q, k, v, mask, scale, softcap), q.dtype, f"{name}: kernel")
    if softcap == 0:
        assert_matches_sdpa(out, q, k, v, mask, scale, q.dtype, f"{name}: kernel")


# name: CASES' key; the o-projection's input quantized by the kernel (merge step; one split: act_quant)
QUANT_CASES = ["mha-causal", "gqa4-window-spec", "gemma3_270m-causal", "gemma3_270m-window-spec", "gqa8-causal-32rows"]


@kernel_runs
@pytest.mark.parametrize("interleave", [False, True], ids=["natural", "interleaved"])
@pytest.mark.parametrize("name", QUANT_CASES)
def test_kernel_quantizes_its_output_for_the_o_projection(name, interleave):
    # out is the plain kernel's, bit for bit; the int8 activation is quantize_act's pure-torch
    # reference of out's rows as the o-projection reads them (out.transpose(1, 2).reshape(B, S,
    # Hq * D)): the same scales; int8 values off by one at most, at a rounding tie (seen under the
    # interpreter, 2 in 8192 values of bf16 rows: the same formula, computed elsewhere); and the
    # sums the matvec reads those of the kernel's own int8 values
    from inductor_fuse.attention import attention_rows
    from inductor_fuse.quant.op import quantize_act_reference

    q, k, v, mask, scale, softcap, splits = _case(name)
    dev = "cpu" if interpreting() else "cuda"
    q, k, v, mask = (t.to(dev) for t in (q, k, v, mask))
    plain = kernel.decode_attention_cuda(q, k, v, mask, scale, softcap, num_splits=splits)
    out, *xa = kernel.decode_attention_cuda(q, k, v, mask, scale, softcap, num_splits=splits, quantize=interleave)
    assert torch.equal(out, plain)
    B, Hq, S, D = q.shape
    qa = quantize_act_reference(attention_rows(out).reshape(B * S, Hq * D).cpu(), interleave)
    for name_, got, ref in zip(("xq", "xd", "xs32", "xs16"), xa, qa):
        assert got.dtype == ref.dtype and got.shape == ref.shape, name_
    xq, xd, xs32, xs16 = (t.cpu() for t in xa)
    assert torch.equal(xd, qa[1]), f"{name}: the scales differ from quantize_act's"
    q8, r8 = xq.view(torch.int8).int(), qa[0].view(torch.int8).int()
    diff = (q8 - r8).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, f"{name}: {int((diff > 0).sum())} int8 values differ"
    if q.dtype == torch.float32:
        assert diff.max() == 0
    tiles, d = q8.reshape(B * S, -1, 32), xd.reshape(B * S, -1)
    lo = [*range(8), *range(16, 24)] if interleave else list(range(16))  # where a tile's first 16 values are
    hi = [i for i in range(32) if i not in lo]
    s_lo, s_hi = (tiles[..., part].sum(-1).float() * d for part in (lo, hi))
    assert torch.equal(xs16.reshape(B * S, -1, 2), torch.stack([s_lo, s_hi], -1))
    assert torch.equal(xs32.reshape(B * S, -1), s_lo + s_hi)
    torch.testing.assert_close(xs32, qa[2], rtol=0, atol=float(xd.max()) * 2)


def test_quantize_act_op_on_cpu_and_its_fake():
    # the op's CPU body: decode_attention's output and quantize_act's tensors of its rows; opcheck
    # checks the fake against it (shapes [B, S, Hq * D / ...])
    from inductor_fuse.attention import attention_rows
    from inductor_fuse.quant.op import quantize_act_reference

    op = torch.ops.inductor_fuse.decode_attention_quantize_act
    q, k, v = make_qkv(2, 8, 2, 2, 64, 40, torch.float32)
    mask = make_mask("causal", 2, 8, 2, 40, 30)
    out, *xa = op(q, k, v, mask, 0.125, 0.0, False, 8)
    assert torch.equal(out, decode_attention(q, k, v, mask, 0.125, 0.0))
    for got, ref in zip(xa, quantize_act_reference(attention_rows(out), False)):
        assert torch.equal(got, ref) and got.shape[:2] == (2, 2)
    torch.library.opcheck(op, (q, k, v, mask, 0.125, 0.0, True, 8))
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        op(q[:, :1, :, :8], k[:, :1, :, :8], v[:, :1, :, :8], mask, 0.125, 0.0, False, 8)


def test_quantize_act_cuda_body_quantizes_only_what_a_matvec_reads():
    # more rows than max_m: out alone (the int8 tensors are left unfilled, as quantize_act's)
    q, k, v = make_qkv(1, 4, 2, 2, 64, 40, torch.float32)
    mask = make_mask("causal", 1, 4, 2, 40, 33)
    calls = []
    real = kernel.decode_attention_cuda

    def spy(*args, **kw):
        calls.append(kw.get("quantize"))
        return real(*args, **kw)

    kernel.decode_attention_cuda = spy
    try:
        out, *xa = kernel._decode_attention_quantize_act_cuda(q, k, v, mask, 0.125, 0.0, False, 1)
    finally:
        kernel.decode_attention_cuda = real
    assert calls == [None] and [t.shape for t in xa] == [(1, 2, 64), (1, 2, 8), (1, 2, 8), (1, 2, 16)]
    assert_close(out, attention_fp64(q, k, v, mask, 0.125, 0.0), q.dtype, "out")


def _with_dead_rows():
    """A causal S = 4 call with an all-False row (batch 0, row 2) and an all-False batch element (1)."""
    q, k, v = make_qkv(2, 8, 2, 4, 64, 384, torch.float32, seed=3)
    mask = make_mask("causal", 2, 8, 4, 384, 150).expand(2, 1, 4, 384).clone()
    mask[0, 0, 2] = False
    mask[1] = False
    return q, k, v, mask


@pytest.mark.parametrize("path", ["op", "kernel-1-split", "kernel-3-splits"])
def test_all_masked_rows_are_zero(path):
    if path != "op" and not (interpreting() or GPU):
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    q, k, v, mask = _with_dead_rows()
    if path == "op":
        out = decode_attention(q, k, v, mask, 0.125, 0.0)
    else:
        out = run_kernel(q, k, v, mask, 0.125, 0.0, num_splits=int(path.split("-")[1]))
    assert torch.isfinite(out).all()
    assert (out[0, :, 2] == 0).all() and (out[1] == 0).all()
    assert_close(out, attention_fp64(q, k, v, mask, 0.125, 0.0), q.dtype, path)


@pytest.mark.parametrize("path", ["op", "kernel-1-split", "kernel-4-splits"])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e30])
def test_garbage_beyond_the_live_length_is_ignored(path, garbage):
    # live = 100 of 512: positions 100..127 share a tile with live ones, 128.. are whole dead tiles
    if path != "op" and not (interpreting() or GPU):
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    B, Hq, Hkv, S, D, T, live = 1, 8, 2, 4, 64, 512, 100
    q, k, v = make_qkv(B, Hq, Hkv, S, D, T, torch.bfloat16, seed=7)
    mask = make_mask("causal", B, Hq, S, T, live)
    ref = attention_fp64(q, k, v, mask, 0.125, 0.0)
    k[:, :, live:] = garbage
    v[:, :, live:] = -garbage
    if path == "op":
        out = decode_attention(q, k, v, mask, 0.125, 0.0)
    else:
        out = run_kernel(q, k, v, mask, 0.125, 0.0, num_splits=int(path.split("-")[1]))
    assert torch.isfinite(out).all()
    assert_close(out, ref, q.dtype, f"{path} with {garbage} past the live length")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_cpu_op_reads_only_what_rows_attend(monkeypatch, garbage, dtype):
    # The op's CPU body runs stock SDPA over the cache up to the last position a row attends to,
    # K and V zeroed where no row of their group looks: garbage before a sliding window and past
    # the live length must not reach the result, and the reference must not run.
    import inductor_fuse.attention as attention

    def no_reference(*args):
        raise AssertionError("the CPU body ran the reference")

    B, Hq, Hkv, S, D, T, live, window = 2, 8, 2, 4, 64, 512, 300, 50
    q, k, v = make_qkv(B, Hq, Hkv, S, D, T, dtype, seed=3)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # the model's layout: [B, S, Hq, D] transposed
    mask = make_mask("window", B, Hq, S, T, live, window=window)
    ref = attention_fp64(q, k, v, mask, 0.125, 0.0)
    first = live - S - window + 1  # the earliest position a row sees
    for t in (k, v):
        t[:, :, :first] = garbage
        t[:, :, live:] = -garbage
    monkeypatch.setattr(attention, "decode_attention_reference", no_reference)
    out = decode_attention(q, k, v, mask, 0.125, 0.0)
    assert out.dtype == dtype and out.is_contiguous() and torch.isfinite(out).all()  # the fake's layout
    assert_close(out, ref, dtype, f"CPU op with {garbage} outside the window")


@kernel_runs
def test_kernel_takes_the_model_layout():
    # q as the model passes it: [B, S, Hq, D] transposed to [B, Hq, S, D] (not contiguous); the mask
    # a row slice of the causal buffer, [1, 1, S, T]
    B, Hq, Hkv, S, D, T = 2, 8, 2, 3, 64, 256
    q = torch.randn(B, S, Hq, D).transpose(1, 2)
    k, v = torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    pos = torch.arange(T)
    causal = pos[:, None] >= pos[None, :]
    mask = causal[None, None, torch.tensor([70, 71, 72])]
    out = run_kernel(q, k, v, mask, 0.125, 0.0, num_splits=2)
    assert_close(out, attention_fp64(q, k, v, mask, 0.125, 0.0), q.dtype, "model layout")


@pytest.mark.parametrize("T", [1, 63, 64, 1000, 32768, 131072])
@pytest.mark.parametrize(
    "B,Hq,Hkv,S,D", [(1, 32, 8, 1, 128), (1, 4, 1, 1, 256), (1, 8, 1, 16, 64), (16, 64, 8, 4, 128)]
)
@pytest.mark.parametrize("elt_bytes,mask_rows", [(2, False), (2, True), (4, True)])
def test_plan_covers_the_buffer_and_fills_the_gpu(T, B, Hq, Hkv, S, D, elt_bytes, mask_rows):
    p = kernel.plan(B, Hq, Hkv, S, D, T, n_sms=132, elt_bytes=elt_bytes, mask_rows=mask_rows)
    GS = Hq // Hkv * S
    assert p.block_r >= 16 and p.block_r & (p.block_r - 1) == 0 and p.block_r * p.row_blocks >= GS
    n_tiles = math.ceil(T / p.block_t)
    assert p.tiles & (p.tiles - 1) == 0 and p.num_splits <= n_tiles  # no empty split
    assert p.num_splits * p.tiles >= n_tiles > p.num_splits * (p.tiles // 2)  # every tile, TILES not too large
    rows = p.block_r if mask_rows else 1
    assert rows * p.tiles * p.block_t <= kernel.MASK_BYTES or p.tiles == 1  # the first mask load
    programs = B * Hkv * p.row_blocks
    assert p.num_splits * programs > min(132 - programs, (n_tiles - 1) * programs)  # one wave of a program per SM
    assert 1 <= p.num_stages <= 3 and (p.num_stages - 1) * 2 * p.block_t * D * elt_bytes <= kernel.SMEM_BYTES


def test_plan_takes_a_split_count():
    assert kernel.plan(2, 8, 2, 4, 64, 384, n_sms=1, num_splits=3).num_splits == 3  # _with_dead_rows
    assert kernel.plan(1, 8, 2, 4, 64, 512, n_sms=1, num_splits=4).num_splits == 4  # the garbage test
    assert kernel.plan(1, 4, 1, 1, 256, 256, n_sms=1, num_splits=4).num_splits == 4  # gemma3_270m-causal
    assert kernel.plan(1, 8, 1, 16, 64, 256, n_sms=1, num_splits=2).row_blocks == 2  # 128 rows of <= 64


def _raises(match, *args):
    with pytest.raises(ValueError, match=match):
        decode_attention(*args)
    with FakeTensorMode(allow_non_fake_inputs=True):  # the fake impl validates the same way
        with pytest.raises(ValueError, match=match):
            decode_attention(*args)


def test_bad_inputs():
    q, k, v = make_qkv(2, 8, 2, 1, 64, 32, torch.float32)
    m = torch.ones(1, 1, 1, 32, dtype=torch.bool)
    _raises("q must be 4-D", q[0], k, v, m, 0.1, 0.0)
    _raises("q must be float32", q.double(), k, v, m, 0.1, 0.0)
    _raises("share one dtype", q, k.half(), v, m, 0.1, 0.0)
    _raises("mask must be bool", q, k, v, m.float(), 0.1, 0.0)
    _raises("k and v must have one shape", q, k, v[:, :, :16], m, 0.1, 0.0)
    _raises("in B and D", q, k[..., :32], v[..., :32], m, 0.1, 0.0)
    _raises("multiple of KV heads", q, k[:, :1].expand(2, 3, 32, 64), v[:, :1].expand(2, 3, 32, 64), m, 0.1, 0.0)
    _raises("mask must have shape", q, k, v, m[..., :16], 0.1, 0.0)
    _raises("mask must have shape", q, k, v, m.expand(1, 2, 1, 32), 0.1, 0.0)  # 2 heads: neither 1 nor Hq
    _raises("mask must have shape", q, k, v, m.expand(1, 1, 2, 32), 0.1, 0.0)  # S broadcast: not allowed
    _raises("scale must be > 0", q, k, v, m, 0.0, 0.0)
    _raises("softcap must be >= 0", q, k, v, m, 0.1, -1.0)
    _raises("empty dimension", q[:, :, :0], k, v, m[:, :, :0], 0.1, 0.0)


def test_opcheck():
    q, k, v = make_qkv(2, 8, 2, 2, 64, 40, torch.float32)
    torch.library.opcheck(decode_attention, (q, k, v, make_mask("causal", 2, 8, 2, 40, 30), 0.125, 0.0))
    torch.library.opcheck(decode_attention, (q, k, v, make_mask("random_per_head", 2, 8, 2, 40, 40), 0.125, 20.0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    q, k, v = make_qkv(1, 4, 1, 1, 64, 48, torch.float32)
    mask = make_mask("window", 1, 4, 1, 48, 40, window=16)

    def f(q):
        return decode_attention(q * 2.0, k, v, mask, 0.125, 0.0) + 1.0

    got = torch.compile(f, backend=backend, fullgraph=True)(q)
    torch.testing.assert_close(got, f(q), rtol=1e-6, atol=1e-6)


def test_cuda_kernel_failure_falls_back_to_the_reference(caplog):
    # The CUDA implementation, called directly on CPU tensors: a head dim without a kernel (32)
    # runs the reference and a WARNING says so once; bad input is still an error.
    _common.warn_kernel_fallback.cache_clear()
    q, k, v = make_qkv(1, 4, 2, 2, 32, 40, torch.float32)
    mask = make_mask("causal", 1, 4, 2, 40, 33)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        for _ in range(2):
            out = kernel._decode_attention_cuda(q, k, v, mask, 0.125, 0.0)
            assert_close(out, attention_fp64(q, k, v, mask, 0.125, 0.0), q.dtype, "fallback")
    said = "decode_attention CUDA kernel failed (ValueError: decode_attention kernel: head dim 32 not in"
    warned = [r for r in caplog.records if said in r.message]
    assert len(warned) == 1
    with pytest.raises(ValueError, match="scale must be > 0"):
        kernel._decode_attention_cuda(q, k, v, mask, -1.0, 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CUDA (and TRITON_INTERPRET unset)")
def test_full_size_on_gpu():
    # Llama-3-8B decode over a 32768-position cache with 1024 live: bf16, D = 128, GQA 4
    B, Hq, Hkv, S, D, T, live = 1, 32, 8, 1, 128, 32768, 1024
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(B, h, n, D, generator=g, device="cuda").to(torch.bfloat16) for h, n in ((Hq, S), (Hkv, T), (Hkv, T))
    )
    k[:, :, live:] = float("nan")  # an unwritten tail is never read into the result
    v[:, :, live:] = float("nan")
    mask = (torch.arange(T, device="cuda") < live)[None, None, None, :]
    out = kernel.decode_attention_cuda(q, k, v, mask, D**-0.5, 0.0)
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = attention_fp64(q, k[:, :, :live], v[:, :, :live], mask[..., :live], D**-0.5, 0.0)
    assert rel_err(out.float(), ref) < 1e-2
    sdpa = F.scaled_dot_product_attention(q, k[:, :, :live], v[:, :, :live], scale=D**-0.5, enable_gqa=True)
    assert rel_err(out.float(), sdpa.float()) < 1e-2
    assert torch.equal(decode_attention(q, k, v, mask, D**-0.5, 0.0), out)  # the op runs this kernel on CUDA
    # every position live: the kernel's time grows with the live length, not with T (CUDA graphs:
    # without them the two launches' CPU cost hides the difference)
    k_all, v_all, mask_all = torch.randn_like(k), torch.randn_like(v), torch.ones_like(mask)
    t_live = _graph_us(lambda: kernel.decode_attention_cuda(q, k, v, mask, D**-0.5, 0.0))
    t_all = _graph_us(lambda: kernel.decode_attention_cuda(q, k_all, v_all, mask_all, D**-0.5, 0.0))
    assert t_live < t_all / 2, f"1024 live: {t_live:.1f} us, all {T} live: {t_all:.1f} us"


def _graph_us(fn, calls=20, replays=5):
    """Median us per call of `fn` captured `calls` times in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return sorted(times)[len(times) // 2]
