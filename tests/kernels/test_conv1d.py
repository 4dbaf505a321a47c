"""torch.ops.inductor_fuse.depthwise_conv1d's Triton kernel against a float64 F.conv1d: odd channel
counts and lengths, every tap count up to MAX_TAPS, left padding, kept windows, a transposed (channel
stride 1) input, bias or none, SiLU or none, three dtypes. On the CPU under TRITON_INTERPRET=1, on the
GPU with INDUCTOR_FUSE_GPU_TESTS=1."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err

from inductor_fuse.conv1d import MAX_TAPS
from inductor_fuse.kernels import conv1d as kernel
from inductor_fuse.kernels._common import interpreting

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
kernel_runs = pytest.mark.skipif(not (interpreting() or GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def conv_fp64(x, w, b, pad, start, length, silu):
    y = F.conv1d(F.pad(x.double(), (pad, 0)), w.double()[:, None], None if b is None else b.double(), groups=w.shape[0])
    y = y[..., start : start + length]
    return F.silu(y) if silu else y


def run_kernel(x, w, b, pad, start, length, silu):
    dev = "cpu" if interpreting() else "cuda"
    x, w = x.to(dev), w.to(dev)
    b = None if b is None else b.to(dev)
    return kernel.depthwise_conv1d_cuda(x, w, b, pad, start, length, silu).cpu()


CASES = [
    # B, C, L, K, pad, start, length, channels-last input, bias, silu
    (1, 1, 1, 1, 0, 0, 1, False, False, False),
    (2, 5, 7, 4, 3, 0, 7, False, True, True),  # causal prefill
    (1, 37, 4, 4, 0, 0, 1, True, True, True),  # decode over a 3-position state
    (3, 70, 130, 3, 2, 5, 100, True, False, False),  # a window in the middle
    (1, 129, 33, 2, 1, 0, 33, True, True, True),
    (2, 3, 20, MAX_TAPS, MAX_TAPS - 1, 0, 20, False, True, True),
]


@kernel_runs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=[f"C{c[1]}-L{c[2]}-K{c[3]}" for c in CASES])
def test_kernel_matches_float64(case, dtype):
    B, C, L, K, pad, start, length, channels_last, bias, silu = case
    g = torch.Generator().manual_seed(C * 1000 + L)
    x = torch.randn(B, L, C, generator=g).transpose(1, 2) if channels_last else torch.randn(B, C, L, generator=g)
    w = torch.randn(C, K, generator=g) / K
    b = torch.randn(C, generator=g) if bias else None
    x, w = x.to(dtype), w.to(dtype)
    b = None if b is None else b.to(dtype)
    got = run_kernel(x, w, b, pad, start, length, silu)
    assert got.shape == (B, C, length) and got.dtype == dtype and got.is_contiguous()
    assert rel_err(got, conv_fp64(x, w, b, pad, start, length, silu)) < TOL[dtype]


@kernel_runs
def test_too_many_taps_is_refused():
    with pytest.raises(ValueError, match="taps"):
        run_kernel(torch.randn(1, 2, 40), torch.randn(2, MAX_TAPS + 1), None, MAX_TAPS, 0, 40, False)


def test_cuda_kernel_failure_falls_back_to_the_reference(caplog, monkeypatch):
    """The CUDA registration's fallback, exercised on CPU tensors by calling it directly with a
    kernel that raises: the reference's result and one WARNING."""

    def broken(*args):
        raise RuntimeError("no kernel for this")

    monkeypatch.setattr(kernel, "depthwise_conv1d_cuda", broken)
    x, w = torch.randn(1, 4, 6), torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        got = kernel._depthwise_conv1d_cuda(x, w, None, 2, 0, 6, True)
    assert rel_err(got, conv_fp64(x, w, None, 2, 0, 6, True)) < 1e-6
    assert "depthwise_conv1d CUDA kernel failed" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a GPU")
@pytest.mark.parametrize("T", [1, 512])
def test_full_size_on_gpu(T):
    """Qwen3.5 / Mamba sizes: C = 8192 channels, 4 taps, bf16, channels-last input."""
    g = torch.Generator(device="cuda").manual_seed(0)
    C, K = 8192, 4
    x = torch.randn(1, T + K - 1, C, generator=g, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    w = torch.randn(C, K, generator=g, device="cuda", dtype=torch.bfloat16) / K
    b = torch.randn(C, generator=g, device="cuda", dtype=torch.bfloat16)
    got = torch.ops.inductor_fuse.depthwise_conv1d(x, w, b, 0, 0, T, True)
    assert rel_err(got, conv_fp64(x, w, b, 0, 0, T, True)) < TOL[torch.bfloat16]
