"""Every Triton kernel against its pure-torch reference, on the CPU under TRITON_INTERPRET=1.

Matvec kernels quantize the activation to int8 per 32-group (W4A8), so they are compared with
the reference on the dequantized activation (tight), and with the float reference (loose).
"""

import pytest
import torch
import triton
from numerics import rel_err

from inductor_fuse import config
from inductor_fuse.kernels import dispatch, gemm
from inductor_fuse.kernels._common import MatvecConfig, act_quant, act_quant_reference, interpreting
from inductor_fuse.kernels.gemm import dequantize_rows, qgemm
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS

pytestmark = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")

ALL_FORMATS = list(KERNELS)


def _assert_close(out, ref, tol, what):
    err = rel_err(out, ref)
    if not err <= tol:
        bad = ((out.double() - ref.double()).abs() > tol * ref.double().abs().max()).nonzero()[:8].tolist()
        raise AssertionError(f"{what}: rel err {err:.3e} > {tol:.1e}; first mismatching [m, n]: {bad}")


def _weight(fmt, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    return FORMATS[fmt].quantize(w)


def _x(M, K, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(M, K, generator=g).to(dtype)


def test_act_quant_matches_reference():
    x = _x(3, 256, 0) * 3
    x[1, :32] = 0.0  # an all-zero group
    for interleave in (False, True):
        xa = act_quant(x, interleave=interleave)
        q = xa.xq.view(torch.int8).float().reshape(3, 8, 32)
        if interleave:  # undo: element l is stored at (l%2)*16 + (l//8)*4 + (l%8)//2
            l = torch.arange(32)
            q = q[..., (l % 2) * 16 + (l // 8) * 4 + (l % 8) // 2]
        deq = (q * xa.xd[:, :, None]).reshape(3, 256)
        torch.testing.assert_close(deq, act_quant_reference(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(xa.xs32, q.sum(-1) * xa.xd, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            xa.xs16, (q.reshape(3, 16, 16).sum(-1) * xa.xd.repeat_interleave(2, 1)), rtol=1e-6, atol=1e-6
        )
    assert (rel_err(act_quant_reference(x), x)) < 1e-2


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("N,K,M", [(37, 256, 1), (129, 512, 3), (19, 256, 17)])
def test_matvec(fmt, N, K, M):
    planes = _weight(fmt, N, K, seed=N + K)
    x = _x(M, K, seed=M)
    bias = torch.randn(N) if M == 3 else None
    out = dispatch.matvec(x, planes, bias, fmt)
    w = FORMATS[fmt].dequantize(planes)
    ref_q = act_quant_reference(x) @ w.T + (bias if bias is not None else 0)
    ref_f = x @ w.T + (bias if bias is not None else 0)
    assert out.shape == (M, N) and out.dtype == x.dtype
    _assert_close(out, ref_q, 1e-5, f"{fmt} matvec vs dequantized-activation reference")
    _assert_close(out, ref_f, 2e-2, f"{fmt} matvec vs float reference")


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_matvec_split_k(fmt, prefetch):
    N, K, M = 11, 1024, 2  # 2 programs along N (the second masked): the interpreter's time is per program
    planes = _weight(fmt, N, K, seed=5)
    x = _x(M, K, seed=5)
    bias = torch.randn(N)
    cfg = MatvecConfig(block_n=8, block_u=2, split_k=3, prefetch=prefetch)  # 3 programs along K, masked tail
    out = dispatch.matvec(x, planes, bias, fmt, config=cfg)
    ref = act_quant_reference(x) @ FORMATS[fmt].dequantize(planes).T + bias
    _assert_close(out, ref, 1e-5, f"{fmt} split-K matvec")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("K", [1024, 768])
def test_matvec_whole_and_partial_steps(fmt, K):
    # K = 1024: K // unit units (a power of two) in two whole steps of block_u, so the kernel drops
    # its masks; K = 768: 3 * 2**j units in steps of 2**(j + 1), the last one partial (masked);
    # each with and without split-K and the register prefetch
    n_units = K // KERNELS[fmt].unit
    block_u = n_units // 2 if K == 1024 else triton.next_power_of_2(n_units) // 2
    N, M = 5, 2  # 3 programs of block_n = 2, the last one masked
    planes = _weight(fmt, N, K, seed=K)
    x = _x(M, K, seed=K)
    ref = act_quant_reference(x) @ FORMATS[fmt].dequantize(planes).T
    for split_k, prefetch in ((1, False), (2, False), (1, True), (2, True)):
        cfg = MatvecConfig(block_n=2, block_u=block_u, split_k=split_k, prefetch=prefetch)
        out = dispatch.matvec(x, planes, None, fmt, config=cfg)
        _assert_close(out, ref, 1e-5, f"{fmt} matvec, {n_units} units, {cfg}")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_matvec_random_bytes(fmt):
    # every bit pattern of the quant bytes, not only what the quantizer emits
    N, K = 19, 256
    f = FORMATS[fmt]
    planes = random_planes(fmt, N, K, seed=7)
    x = _x(2, K, seed=3)
    out = dispatch.matvec(x, planes, None, fmt)
    ref = act_quant_reference(x) @ f.dequantize(planes).T
    _assert_close(out, ref, 1e-5, f"{fmt} matvec on random bytes")
    out = qgemm(x, planes, None, fmt)
    _assert_close(out, x @ f.dequantize(planes).T, 1e-5, f"{fmt} gemm on random bytes")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("N,K,M", [(37, 256, 1), (37, 512, 17)])
def test_gemm(fmt, N, K, M):
    planes = _weight(fmt, N, K, seed=N * K)
    x = _x(M, K, seed=M)
    bias = torch.randn(N) if M == 17 else None
    out = qgemm(x, planes, bias, fmt)
    ref = x @ FORMATS[fmt].dequantize(planes).T + (bias if bias is not None else 0)
    assert out.shape == (M, N)
    _assert_close(out, ref, 1e-5, f"{fmt} gemm")


def test_gemm_bf16_and_dispatch_any_m():
    fmt, N, K = "q4_k", 37, 256
    planes = _weight(fmt, N, K, seed=1)
    w = FORMATS[fmt].dequantize(planes)
    for M in (1, 3, 17):
        x = _x(M, K, seed=M, dtype=torch.bfloat16)
        out = dispatch.qlinear_cuda(x.reshape(1, M, K), planes, None, fmt)  # the CUDA body, on CPU tensors
        assert out.shape == (1, M, N) and out.dtype == torch.bfloat16
        _assert_close(out[0].float(), x.float() @ w.T, 2e-2, f"dispatch M={M}")


@pytest.mark.parametrize("K", [512, 288])  # 288: not a multiple of the interpreter's 64-wide tile
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_dequantize_rows_bit_exact(fmt, K):
    if K % FORMATS[fmt].block_size:
        pytest.skip(f"{fmt}: K={K} is not a multiple of its block")
    N = 37
    planes = _weight(fmt, N, K, seed=11)
    ref = FORMATS[fmt].dequantize(planes)
    out = dequantize_rows(planes, fmt, 5, 30, torch.full((25, K), float("nan")))
    torch.testing.assert_close(out, ref[5:30], rtol=0, atol=0)


def test_dequant_mm_chunks(monkeypatch):
    monkeypatch.setattr(gemm, "DEQUANT_CHUNK_BYTES", 256 * 256 * 4)  # 256-row chunks: 2 of them
    monkeypatch.setattr(gemm, "num_sms", lambda device: 1)
    fmt, N, K = "q6_k", 300, 256
    planes = _weight(fmt, N, K, seed=12)
    x = _x(5, K, seed=12)
    bias = torch.randn(N)
    out = gemm.dequant_mm(x, planes, bias, fmt)
    _assert_close(out, x @ FORMATS[fmt].dequantize(planes).T + bias, 1e-6, "dequant_mm")


def test_dispatch_follows_the_settings(monkeypatch):
    # exact_matvec sends a decode-sized call to the GEMM (float activation: the float reference
    # at 1e-5); gemm="fused" keeps qgemm past fused_gemm_max_m, where dequant_mm would run
    fmt, N, K = "q6_k", 37, 256  # q6_k: fused_gemm_max_m = 0, dequant_mm right above the W4A8 paths
    planes = _weight(fmt, N, K, seed=2)
    w = FORMATS[fmt].dequantize(planes)
    x = _x(1, K, seed=2)
    with config.patch(exact_matvec=False):
        _assert_close(dispatch.qlinear_cuda(x, planes, None, fmt), act_quant_reference(x) @ w.T, 1e-5, "matvec")
    with config.patch(exact_matvec=True):
        _assert_close(dispatch.qlinear_cuda(x, planes, None, fmt), x @ w.T, 1e-5, "exact_matvec")
    calls = []

    def spy(name, fn):
        def wrapped(*args):
            calls.append(name)
            return fn(*args)

        return wrapped

    monkeypatch.setattr(dispatch, "qgemm", spy("qgemm", gemm.qgemm))
    monkeypatch.setattr(dispatch, "dequant_mm", spy("dequant_mm", gemm.dequant_mm))
    spec = KERNELS[fmt]
    x = _x(max(spec.matvec_max_m, spec.int8_mma_max_m) + 1, K, seed=3)  # the first M past both W4A8 paths
    with config.patch(exact_matvec=False, gemm="auto"):
        dispatch.qlinear_cuda(x, planes, None, fmt)
    with config.patch(exact_matvec=False, gemm="fused"):
        dispatch.qlinear_cuda(x, planes, None, fmt)
    assert calls == ["dequant_mm", "qgemm"]


def test_dispatch_routes_a_few_rows_to_int8_mma(monkeypatch):
    """Q4_K with matvec_max_m < M <= int8_mma_max_m: int8_mma (W4A8: the int8-activation reference at
    1e-5), the GLU as int8_mma + act*mul, x quantized by the caller when given; exact_matvec and
    the edges of the range keep the other paths. Every format with an int8_mma_max_m has the kernel."""
    from inductor_fuse.kernels import int8_mma as mma_file

    for fmt, spec in KERNELS.items():
        assert spec.int8_mma_max_m == 0 or fmt in mma_file.FORMATS, fmt
    fmt, N, K = "q4_k", 40, 256
    spec = KERNELS[fmt]
    planes = _weight(fmt, N, K, seed=5)
    w = FORMATS[fmt].dequantize(planes)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return mma_file.int8_mma(*args, **kwargs)

    monkeypatch.setattr(dispatch, "int8_mma", spy)
    lo, hi = spec.matvec_max_m, spec.int8_mma_max_m
    for M in (lo, lo + 1, hi, hi + 1):
        x = _x(M, K, seed=M)
        with config.patch(exact_matvec=False):
            out = dispatch.qlinear_cuda(x, planes, None, fmt)
        ref = act_quant_reference(x) @ w.T if M <= hi else x @ w.T
        _assert_close(out, ref, 1e-5, f"M={M}")
    assert calls == [lo + 1, hi]
    x = _x(hi, K, seed=9)
    y = dispatch.qlinear_cuda(x, planes, None, fmt, act="silu", xa=list(vars(act_quant(x)).values()))
    gate_up = act_quant_reference(x) @ w.T
    _assert_close(y, torch.nn.functional.silu(gate_up[:, 0::2]) * gate_up[:, 1::2], 1e-5, "GLU")
    with config.patch(exact_matvec=True):
        _assert_close(dispatch.qlinear_cuda(x, planes, None, fmt), x @ w.T, 1e-5, "exact_matvec")
    assert calls == [lo + 1, hi, hi]


def test_matvec_launch_hook():
    fmt, N, K = "q8_0", 8, 64
    planes = _weight(fmt, N, K, seed=4)
    launched = []
    with config.patch(on_matvec_launch=launched.append):
        dispatch.matvec(_x(1, K, seed=4), planes, None, fmt)
    dispatch.matvec(_x(1, K, seed=4), planes, None, fmt)
    assert len(launched) == 1  # the interpreter's launch returns None, a GPU launch the compiled kernel


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "int4_g32", "iq4_xs"])
@pytest.mark.parametrize("M, split_k", [(1, 1), (3, 1), (2, 3), (40, 1)])  # M = 40: the GEMM path
def test_glu_matvec(fmt, act, M, split_k):
    """glu_qlinear's CUDA body: the matvec with act(gate) * up in its epilogue (rows interleave gate
    and up), the split-K path (GLU after the reduction), the GEMM path (GLU as its own step)."""
    from inductor_fuse.quant.op import glu_act

    N, K = 2 * 11, 512
    planes = _weight(fmt, N, K, seed=11)
    x = _x(M, K, seed=M)
    bias = torch.randn(N) if M == 3 else None
    w = FORMATS[fmt].dequantize(planes)
    xr = act_quant_reference(x) if M <= KERNELS[fmt].matvec_max_m else x
    ref = glu_act(xr @ w.T + (bias if bias is not None else 0), act)
    if split_k > 1:
        cfg = MatvecConfig(block_n=8, block_u=2, split_k=split_k)
        out = dispatch.matvec(x, planes, bias, fmt, config=cfg, act=act)
    else:
        out = dispatch.qlinear_cuda(x, planes, bias, fmt, act)
    assert out.shape == (M, N // 2) and out.dtype == x.dtype
    _assert_close(out, ref, 2e-5, f"{fmt} GLU ({act}) matvec, M = {M}, split {split_k}")
