"""int8_mma (W4A8 on the int8 tensor cores, 2 <= M <= 64) against the reference on the dequantized
int8 activation (tight) and the float reference (loose), under TRITON_INTERPRET=1 on the CPU; the
same cases at full size on the GPU are in test_gpu.py."""

import pytest
import torch
from numerics import rel_err

from inductor_fuse.kernels._common import act_quant, act_quant_reference, interpreting
from inductor_fuse.kernels.int8_mma import FORMATS as MMA_FORMATS
from inductor_fuse.kernels.int8_mma import MmaConfig, int8_mma
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS

pytestmark = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")


def _case(fmt, M, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = FORMATS[fmt].quantize(torch.randn(N, K, generator=g))
    x = torch.randn(M, K, generator=g)
    return x, planes, FORMATS[fmt].dequantize(planes)


def _check(out, x, w, bias, what):
    ref_q = act_quant_reference(x) @ w.T + (bias if bias is not None else 0)
    ref_f = x @ w.T + (bias if bias is not None else 0)
    assert out.shape == ref_q.shape and out.dtype == x.dtype, what
    assert rel_err(out, ref_q) < 1e-5, f"{what}: {rel_err(out, ref_q):.2e} against the int8-activation reference"
    assert rel_err(out, ref_f) < 2e-2, f"{what}: {rel_err(out, ref_f):.2e} against the float reference"


@pytest.mark.parametrize("fmt", MMA_FORMATS)
@pytest.mark.parametrize("M,N,K", [(2, 37, 256), (5, 64, 512), (16, 19, 256), (17, 40, 512), (33, 23, 256)])
def test_int8_mma_matches_reference(fmt, M, N, K):
    x, planes, w = _case(fmt, M, N, K, seed=M * N)
    bias = torch.randn(N) if M % 2 else None
    _check(int8_mma(x, planes, bias, fmt), x, w, bias, f"{fmt} M={M} N={N} K={K}")


@pytest.mark.parametrize("fmt", MMA_FORMATS)
@pytest.mark.parametrize("split_k,weights_first", [(2, True), (3, False), (3, True)])
def test_int8_mma_split_k(fmt, split_k, weights_first):
    """Partials over K summed by splitk_reduce, the bias added once; a split count that does not
    divide the units leaves a shorter last split; both operand orders."""
    x, planes, w = _case(fmt, 3, 21, 1024, seed=split_k)
    bias = torch.randn(21)
    cfg = MmaConfig(16, 16, split_k, num_warps=1, num_stages=1, weights_first=weights_first)
    _check(int8_mma(x, planes, bias, fmt, config=cfg), x, w, bias, f"{fmt} split_k={split_k}")


@pytest.mark.parametrize("fmt", MMA_FORMATS)
def test_int8_mma_random_bytes_and_given_activation(fmt):
    """Every bit pattern of the planes (random bytes, not a quantizer's output: Q6_K codes at both
    ends, all 6-bit scales and mins), and x handed in already quantized, as the act_quant rule does."""
    planes = random_planes(fmt, 24, 512, seed=7)
    w = FORMATS[fmt].dequantize(planes)
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(3)) * 5
    _check(int8_mma(x, planes, None, fmt, xa=act_quant(x)), x, w, None, f"{fmt} random bytes")


def test_int8_mma_bf16_and_errors():
    x, planes, w = _case("q4_k", 3, 32, 256)
    out = int8_mma(x.bfloat16(), planes, None, "q4_k")
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), act_quant_reference(x.bfloat16().float()) @ w.T) < 1e-2
    with pytest.raises(NotImplementedError, match="q8_0"):
        int8_mma(x, planes, None, "q8_0")
