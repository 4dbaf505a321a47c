"""Q4_0 and IQ4_XS Triton kernels on the CPU under TRITON_INTERPRET=1: the W4A8 matvec, the fused
GEMM and the dequant kernel against float64 references; the IQ4_XS grid lookup's PTX (which only a
GPU runs) simulated instruction by instruction against the grid."""

import os

import pytest
import torch
from numerics import rel_err

from inductor_fuse.quant.formats import FORMATS

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = pytest.mark.skipif(not INTERPRET, reason="CPU interpreter tests (TRITON_INTERPRET=1)")


from inductor_fuse.kernels import dispatch  # noqa: E402
from inductor_fuse.kernels._common import MatvecConfig, act_quant_reference  # noqa: E402
from inductor_fuse.kernels.gemm import dequantize_rows, qgemm  # noqa: E402
from inductor_fuse.kernels.registry import KERNELS  # noqa: E402

NAMES = ["q4_0"]
# N not a multiple of any block; K = 288 (9 blocks of 32) only for Q4_0 (IQ4_XS needs K % 256 == 0)
SHAPES = {"q4_0": [(37, 288, 1), (19, 512, 3), (37, 256, 17)]}


def _assert_close(out, ref, tol, what):
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: rel err {err:.3e} > {tol:.1e}"


def _weight(fmt, N, K, seed):
    return FORMATS[fmt].quantize(torch.randn(N, K, generator=torch.Generator().manual_seed(seed)))


def _x(M, K, seed, dtype=torch.float32):
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1000)).to(dtype)


def _refs(x, planes, fmt, bias):
    # float64: on the int8-rounded activation (what W4A8 computes exactly) and on x itself
    w = FORMATS[fmt].dequantize(planes).double()
    b = bias.double() if bias is not None else 0
    return act_quant_reference(x).double() @ w.T + b, x.double() @ w.T + b


def test_registered():
    for fmt in NAMES:
        spec = KERNELS[fmt]
        assert spec.fmt == fmt and fmt in FORMATS
        assert FORMATS[fmt].block_size % spec.unit == 0 and spec.matvec_configs


@pytest.mark.parametrize("fmt", NAMES)
@pytest.mark.parametrize("case", range(3))
def test_matvec(fmt, case):
    N, K, M = SHAPES[fmt][case]
    planes = _weight(fmt, N, K, seed=N + K)
    x = _x(M, K, seed=M)
    bias = torch.randn(N) if M == 3 else None
    out = dispatch.matvec(x, planes, bias, fmt)
    ref_q, ref_f = _refs(x, planes, fmt, bias)
    assert out.shape == (M, N) and out.dtype == x.dtype
    _assert_close(out, ref_q, 1e-5, f"{fmt} matvec vs dequantized-activation reference")
    _assert_close(out, ref_f, 2e-2, f"{fmt} matvec vs float reference")


@pytest.mark.parametrize("fmt", NAMES)
def test_matvec_configs(fmt):
    # the default config, split-K over 3 programs with a masked tail, the register prefetch
    N, K, M = 19, 1024, 2
    planes = _weight(fmt, N, K, seed=5)
    x = _x(M, K, seed=5)
    bias = torch.randn(N)
    ref_q, _ = _refs(x, planes, fmt, bias)
    for cfg in (
        KERNELS[fmt].matvec_configs[0],
        MatvecConfig(block_n=8, block_u=2, split_k=3),
        MatvecConfig(block_n=8, block_u=2, split_k=3, prefetch=True),
    ):
        out = dispatch.matvec(x, planes, bias, fmt, config=cfg)
        _assert_close(out, ref_q, 1e-5, f"{fmt} matvec {cfg}")


@pytest.mark.parametrize("fmt", NAMES)
def test_matvec_and_gemm_on_random_bytes(fmt):
    # every bit pattern of the quant bytes (all codes, IQ4_XS scales -32..31), not only what the
    # quantizer emits; finite fp16 scales
    f = FORMATS[fmt]
    N, K = 19, 512
    g = torch.Generator().manual_seed(7)
    raw = torch.randint(0, 256, (N, f.row_bytes(K)), dtype=torch.uint8, generator=g)
    planes = list(f.from_gguf_bytes(raw))
    planes[-1] = (torch.rand(planes[-1].shape, generator=g) * 0.02 - 0.01).half()  # d
    x = _x(2, K, seed=3)
    ref_q, ref_f = _refs(x, planes, fmt, None)
    _assert_close(dispatch.matvec(x, planes, None, fmt), ref_q, 1e-5, f"{fmt} matvec on random bytes")
    _assert_close(qgemm(x, planes, None, fmt), ref_f, 1e-5, f"{fmt} gemm on random bytes")


@pytest.mark.parametrize("fmt", NAMES)
@pytest.mark.parametrize("M", [1, 17])
def test_gemm(fmt, M):
    N, K = 37, 512
    planes = _weight(fmt, N, K, seed=N * K)
    x = _x(M, K, seed=M)
    bias = torch.randn(N) if M == 17 else None
    out = qgemm(x, planes, bias, fmt)
    assert out.shape == (M, N)
    _assert_close(out, _refs(x, planes, fmt, bias)[1], 1e-5, f"{fmt} gemm")


def test_q4_0_gemm_k_not_a_multiple_of_64():
    N, K, M = 21, 288, 5
    planes = _weight("q4_0", N, K, seed=1)
    x = _x(M, K, seed=1)
    _assert_close(qgemm(x, planes, None, "q4_0"), _refs(x, planes, "q4_0", None)[1], 1e-5, "q4_0 gemm, K = 288")


@pytest.mark.parametrize("fmt", NAMES)
def test_dequantize_rows_bit_exact(fmt):
    N, K = 37, 512
    planes = _weight(fmt, N, K, seed=11)
    ref = FORMATS[fmt].dequantize(planes)
    out = dequantize_rows(planes, fmt, 5, 30, torch.full((25, K), float("nan")))
    torch.testing.assert_close(out, ref[5:30], rtol=0, atol=0)


@pytest.mark.parametrize("fmt", NAMES)
def test_dispatch_any_m_bf16(fmt):
    # the CUDA body of qlinear on CPU tensors: matvec (M <= matvec_max_m) or GEMM, bf16 in and out
    N, K = 37, 256
    planes = _weight(fmt, N, K, seed=2)
    w = FORMATS[fmt].dequantize(planes)
    for M in (1, 3, 17):
        x = _x(M, K, seed=M, dtype=torch.bfloat16)
        out = dispatch.qlinear_cuda(x.reshape(1, M, K), planes, None, fmt)
        assert out.shape == (1, M, N) and out.dtype == torch.bfloat16
        _assert_close(out[0].float(), x.float() @ w.T, 2e-2, f"{fmt} dispatch M={M}")
