"""w4a16_mma (W4A16 on the bf16 / fp16 tensor cores, nibbles decoded on packed bytes) against a
float64 oracle on the dequantized weights, under TRITON_INTERPRET=1 on the CPU (the float32 decode:
inline asm does not run there); the packed bf16 / fp16 decode at full size is in test_gpu.py."""

import pytest
import torch
from numerics import rel_err

from inductor_fuse.kernels._common import interpreting
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.kernels.w4a16_mma import FORMATS as W4A16_FORMATS
from inductor_fuse.kernels.w4a16_mma import W4A16Config, w4a16_mma
from inductor_fuse.quant.formats import FORMATS

pytestmark = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")


def _case(fmt, M, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = FORMATS[fmt].quantize(torch.randn(N, K, generator=g))
    return torch.randn(M, K, generator=g), planes, FORMATS[fmt].dequantize(planes)


def _oracle(x, w, bias):
    return x.double() @ w.double().T + (bias.double() if bias is not None else 0)


@pytest.mark.parametrize("fmt", W4A16_FORMATS)
@pytest.mark.parametrize("M,N,K", [(1, 37, 256), (5, 64, 512), (16, 19, 768), (17, 40, 512), (33, 23, 256)])
def test_w4a16_mma_matches_oracle(fmt, M, N, K):
    """Rows of x and of the weights that fill no block (masked stores), K of 1-3 blocks, a bias on
    odd M; float32 x: the decode and the products in float32."""
    x, planes, w = _case(fmt, M, N, K, seed=M * N)
    bias = torch.randn(N) if M % 2 else None
    out = w4a16_mma(x, planes, bias, fmt)
    assert out.shape == (M, N) and out.dtype == torch.float32
    assert rel_err(out, _oracle(x, w, bias)) < 1e-5


@pytest.mark.parametrize("fmt,block_u,split_k,unroll", [("q4_k", 1, 3, 1), ("q4_k", 2, 2, 1), ("q4_k", 4, 1, 1),
                                                        ("q4_k", 2, 3, 1), ("q4_k", 1, 5, 2), ("q6_k", 1, 3, 1),
                                                        ("q6_k", 1, 5, 1), ("q6_k", 1, 5, 2)])  # fmt: skip
def test_w4a16_mma_units_per_step_and_split_k(fmt, block_u, split_k, unroll):
    """Q4_K: 1, 2 or 4 units per K step (the K order of the decoded tile spans each step); partials
    over K summed by splitk_reduce with the bias added once, split counts that leave a shorter last
    split (Q6_K: 12 units); unroll 2 over splits of 5 and 4 steps (Q4_K) and 3 (Q6_K). Under the
    interpreter tl.range is a plain loop: the unrolled compiled loop is test_gpu.py's."""
    x, planes, w = _case(fmt, 3, 21, 1536, seed=block_u + split_k)
    bias = torch.randn(21)
    cfg = W4A16Config(block_n=16, block_u=block_u, num_warps=1, num_stages=1, split_k=split_k, unroll=unroll)
    assert rel_err(w4a16_mma(x, planes, bias, fmt, config=cfg), _oracle(x, w, bias)) < 1e-5


@pytest.mark.parametrize("fmt", W4A16_FORMATS)
def test_w4a16_mma_random_bytes_bf16_and_fp16(fmt):
    """Every bit pattern of the planes (random bytes: all codes, scales and mins), bf16 and fp16 x:
    the weights rounded to x's dtype before the dot, as on the GPU."""
    planes = random_planes(fmt, 24, 512, seed=7)
    w = FORMATS[fmt].dequantize(planes)
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(3))
    for dt, tol in ((torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
        out = w4a16_mma(x.to(dt), planes, None, fmt)
        assert out.dtype == dt
        assert rel_err(out.float(), _oracle(x.to(dt), w, None)) < tol, dt


def test_w4a16_mma_errors():
    x, planes, _ = _case("q4_k", 3, 32, 256)
    with pytest.raises(NotImplementedError, match="q8_0"):
        w4a16_mma(x, planes, None, "q8_0")
    x2, planes2, _ = _case("q4_k", 2, 8, 256)
    with pytest.raises(ValueError, match="K % 256"):
        w4a16_mma(x2[:, :128].contiguous(), [p[:, : p.shape[1] // 2].contiguous() for p in planes2], None, "q4_k")
    with pytest.raises(ValueError, match="block_u must be 1, 2 or 4"):  # a step's units must lie in one block
        w4a16_mma(x, planes, None, "q4_k", config=W4A16Config(block_n=16, block_u=3, num_warps=1, num_stages=1))
