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


UPDATE_CASES = [
    # B, C, S (state), T (new), K, start, length, channels-last x
    (1, 37, 3, 1, 4, 0, 1, True),  # Mamba / Qwen3.5 decode: state K - 1, one token
    (2, 5, 4, 1, 4, 1, 1, False),  # a state of K positions (transformers' layout): the first output dropped
    (1, 33, 3, 7, 4, 3, 4, True),  # several tokens, the last outputs kept
    (2, 16, 4, 2, 4, 0, 3, False),  # T < S: the new state keeps part of the old one
    (1, 8, 2, 100, 3, 0, 100, True),  # more outputs than one tile
]


@kernel_runs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", UPDATE_CASES, ids=[f"S{c[2]}-T{c[3]}-K{c[4]}" for c in UPDATE_CASES])
def test_update_kernel_matches_float64(case, dtype):
    """depthwise_conv1d_update: the convolution over cat(state, x) and the state's update in place."""
    B, C, S, T, K, start, length, channels_last = case
    g = torch.Generator().manual_seed(C * 100 + T)
    state = torch.randn(B, C, S, generator=g).to(dtype)
    x = (torch.randn(B, T, C, generator=g).transpose(1, 2) if channels_last else torch.randn(B, C, T, generator=g)).to(
        dtype
    )
    w = (torch.randn(C, K, generator=g) / K).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    xs = torch.cat([state, x], -1)
    ref = conv_fp64(xs, w, b, 0, start, length, True)
    dev = "cpu" if interpreting() else "cuda"
    st = state.to(dev)
    got = kernel.depthwise_conv1d_update_cuda(st, x.to(dev), w.to(dev), b.to(dev), start, length, True).cpu()
    assert got.shape == (B, C, length) and got.dtype == dtype
    assert rel_err(got, ref) < TOL[dtype]
    assert torch.equal(st.cpu(), xs[..., T:])  # the last S positions of cat(state, x), exactly


def test_update_op_on_cpu_is_the_reference():
    state, x, w = torch.randn(1, 6, 3), torch.randn(1, 6, 2), torch.randn(6, 4)
    xs = torch.cat([state, x], -1)
    got = torch.ops.inductor_fuse.depthwise_conv1d_update(state, x, w, None, 0, 2, False)
    assert rel_err(got, conv_fp64(xs, w, None, 0, 0, 2, False)) < 1e-6 and torch.equal(state, xs[..., 2:])
    with pytest.raises(ValueError, match="agree on B, C"):
        torch.ops.inductor_fuse.depthwise_conv1d_update(torch.randn(1, 5, 3), x, w, None, 0, 2, False)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a GPU")
def test_full_size_update_on_gpu():
    """The decode step at Qwen3.5 / Mamba sizes: C = 8192, 4 taps, a 3-position state, bf16."""
    g = torch.Generator(device="cuda").manual_seed(0)
    C, K = 8192, 4
    state = torch.randn(1, C, K - 1, generator=g, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1, C, generator=g, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    w = torch.randn(C, K, generator=g, device="cuda", dtype=torch.bfloat16) / K
    xs = torch.cat([state, x], -1)
    got = torch.ops.inductor_fuse.depthwise_conv1d_update(state, x, w, None, 0, 1, True)
    assert rel_err(got, conv_fp64(xs, w, None, 0, 0, 1, True)) < TOL[torch.bfloat16]
    assert torch.equal(state, xs[..., 1:])
