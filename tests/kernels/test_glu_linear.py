"""torch.ops.inductor_fuse.glu_linear: the CPU reference against a float64 GLU of the de-interleaved
weights, and the Triton kernels (the fused one for M <= 16, mm + act_mul above) against the
reference on odd shapes. Kernel tests run under TRITON_INTERPRET=1 on the CPU and on the GPU with
INDUCTOR_FUSE_GPU_TESTS=1."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err
from torch._subclasses.fake_tensor import FakeTensorMode

import inductor_fuse  # noqa: F401 -- defines the op, registers its CUDA kernel
from inductor_fuse.kernels import glu_linear as kernel
from inductor_fuse.kernels._common import interpreting

glu_linear = torch.ops.inductor_fuse.glu_linear
GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
kernel_runs = pytest.mark.skipif(not (interpreting() or GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def glu_fp64(x, wg, wu, bg, bu, act):
    """act(x Wg^T + bg) * (x Wu^T + bu) in float64 from the separate gate and up weights."""
    g = F.linear(x.double(), wg.double(), None if bg is None else bg.double())
    u = F.linear(x.double(), wu.double(), None if bu is None else bu.double())
    a = F.silu(g) if act == "silu" else F.gelu(g, approximate="tanh")
    return a * u


def make(M, I, K, dtype, bias, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, M, K, generator=g).to(dtype)
    wg, wu = (torch.randn(I, K, generator=g) / K**0.5 for _ in range(2))
    bg, bu = (torch.randn(I, generator=g) if bias else None for _ in range(2))
    w = torch.stack([wg, wu], 1).reshape(2 * I, K).to(dtype)
    b = torch.stack([bg, bu], 1).reshape(2 * I).to(dtype) if bias else None
    wg, wu = w[0::2], w[1::2]  # the rounded values, for the oracle
    bg, bu = (b[0::2], b[1::2]) if bias else (None, None)
    return x, w, b, (wg, wu, bg, bu)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_on_cpu_against_float64(act, dtype):
    x, w, b, parts = make(5, 24, 40, dtype, bias=True, lead=(2,))
    out = glu_linear(x, w, b, act)
    assert out.shape == (2, 5, 24) and out.dtype == dtype
    assert rel_err(out.double(), glu_fp64(x, *parts, act)) < TOL[dtype]


def run_kernel(x, w, b, act):
    dev = "cpu" if interpreting() else "cuda"
    x, w = x.to(dev), w.to(dev)
    b = None if b is None else b.to(dev)
    return kernel.glu_linear_cuda(x, w, b, act).cpu()


@kernel_runs
@pytest.mark.parametrize(
    "M,I,K,bias",
    [(1, 40, 96, False), (3, 17, 33, True), (16, 64, 128, False), (7, 130, 200, True), (17, 24, 48, True)],
)
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_against_float64(M, I, K, bias, act, dtype):
    # M = 17: past FUSED_MAX_M, the mm + act_mul path
    if dtype == torch.bfloat16 and M > kernel.FUSED_MAX_M and interpreting():
        pytest.skip("the CPU's bf16 mm is the reference's own; the act_mul kernel is covered in float32")
    x, w, b, parts = make(M, I, K, dtype, bias, seed=M * I)
    out = run_kernel(x, w, b, act)
    assert out.shape == (M, I) and out.dtype == dtype
    assert rel_err(out.double(), glu_fp64(x, *parts, act)) < TOL[dtype]


@kernel_runs
def test_kernel_reads_a_strided_x_and_keeps_leading_dims():
    x, w, b, parts = make(4, 20, 64, torch.float32, bias=False, lead=(2,))
    xt = x.transpose(0, 1)  # [4, 2, 64], not contiguous in its leading dims
    out = run_kernel(xt, w, b, "silu")
    assert out.shape == (4, 2, 20)
    assert rel_err(out.double(), glu_fp64(xt, *parts, "silu")) < TOL[torch.float32]


def test_plan_fills_the_gpu_and_steps_k_by_256_bytes():
    assert kernel.plan(14336, 4096, 2, 132)[:2] == (64, 128)  # 224 programs
    assert kernel.plan(2048, 640, 2, 132)[:2] == (16, 128)  # 128 programs, the smallest tile
    assert kernel.plan(100, 24, 4, 132)[1] == 32  # K smaller than a step


@pytest.mark.parametrize(
    "x,w,b,act,match",
    [
        ((2, 8), (6, 8), None, "relu", "act must be one of"),
        ((2, 8), (5, 8), None, "silu", r"\[2I, K\]"),
        ((2, 8), (6, 4), None, "silu", r"\[2I, K\]"),
        ((2, 8), (6, 8), (3,), "silu", "bias must be"),
    ],
)
def test_bad_arguments_raise(x, w, b, act, match):
    args = (torch.randn(*x), torch.randn(*w), None if b is None else torch.randn(*b), act)
    with pytest.raises(ValueError, match=match):
        glu_linear(*args)
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=match):
        glu_linear(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))


def test_dtype_mismatch_raises():
    with pytest.raises(ValueError, match="weight dtype"):
        glu_linear(torch.randn(2, 8), torch.randn(6, 8, dtype=torch.bfloat16), None, "silu")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CUDA (and TRITON_INTERPRET unset)")
@pytest.mark.parametrize("M", [1, 4, 16, 64])
def test_full_size_on_gpu(M):
    # Llama-3.2-1B's MLP in bf16: the op on CUDA runs the kernel, within bf16 of the float64 GLU
    x, w, b, parts = make(M, 8192, 2048, torch.bfloat16, bias=False, seed=M)
    x, w = x.cuda(), w.cuda()
    out = glu_linear(x, w, None, "silu")
    assert torch.equal(out, kernel.glu_linear_cuda(x, w, None, "silu"))
    assert rel_err(out.double().cpu(), glu_fp64(x.cpu(), *parts, "silu")) < 1e-2


def test_a_kernel_that_cannot_run_falls_back_to_the_reference_with_one_warning(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("glu_linear test: this kernel cannot run")

    monkeypatch.setattr(kernel, "glu_linear_cuda", broken)
    x, w, b, parts = make(3, 8, 16, torch.float32, bias=True)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        outs = [kernel._glu_linear_cuda(x, w, b, "silu") for _ in range(2)]
    for out in outs:
        assert rel_err(out.double(), glu_fp64(x, *parts, "silu")) < TOL[torch.float32]
    warned = [r for r in caplog.records if "this kernel cannot run" in r.message]
    assert len(warned) == 1 and "glu_linear" in warned[0].message
