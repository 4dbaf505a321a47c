"""torch.ops.inductor_fuse.qlinear: CPU reference body, fake impl under torch.compile, validation,
and the CUDA implementation's fallback to the reference."""

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from inductor_fuse.kernels import _common, dispatch, ops
from inductor_fuse.quant.formats import FORMATS
from inductor_fuse.quant.op import qlinear_reference

qlinear = torch.ops.inductor_fuse.qlinear


def _planes(fmt, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(FORMATS[fmt].quantize(torch.randn(N, K, generator=g)))


@pytest.mark.parametrize(
    "fmt",
    [
        "q4_k",
        "q5_k",
        "q6_k",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q8_0",
        "iq4_xs",
        "iq4_nl",
        "int4_g32",
        "int4_g64",
        "int4_g128",
    ],
)
def test_cpu_body_is_the_reference(fmt):
    N, K = 37, 256
    planes = _planes(fmt, N, K)
    x = torch.randn(2, 3, K)
    bias = torch.randn(N)
    out = qlinear(x, planes, bias, fmt)
    assert out.shape == (2, 3, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, qlinear_reference(x, planes, bias, fmt), rtol=1e-5, atol=1e-4)
    xb = x.bfloat16()
    outb = qlinear(xb, planes, None, fmt)
    assert outb.dtype == torch.bfloat16
    torch.testing.assert_close(outb.float(), qlinear_reference(xb, planes, None, fmt).float(), rtol=2e-2, atol=2e-1)


def test_opcheck():
    planes = _planes("q4_k", 37, 256)
    torch.library.opcheck(qlinear, (torch.randn(3, 256), planes, torch.randn(37), "q4_k"))
    torch.library.opcheck(qlinear, (torch.randn(1, 2, 256), planes, None, "q4_k"))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    planes = _planes("q6_k", 37, 512, seed=1)
    bias = torch.randn(37)

    def f(x):
        return torch.relu(qlinear(x * 2.0, planes, bias, "q6_k")) + 1.0

    x = torch.randn(5, 512)
    got = torch.compile(f, backend=backend, fullgraph=True)(x)
    torch.testing.assert_close(got, f(x), rtol=1e-5, atol=1e-4)


def _raises(match, *args):
    with pytest.raises(ValueError, match=match):
        qlinear(*args)
    # the fake impl validates the same way
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(ValueError, match=match):
            qlinear(*args)


def test_bad_inputs():
    planes = _planes("q4_k", 37, 256)
    _raises("K = x.shape.* multiple", torch.randn(2, 200), planes, None, "q4_k")
    _raises("plane 'qs' must have shape", torch.randn(2, 512), planes, None, "q4_k")
    _raises("x must be float32", torch.randint(0, 3, (2, 256)), planes, None, "q4_k")
    _raises(
        "plane 'dm' must be torch.float16", torch.randn(2, 256), [planes[0], planes[1], planes[2].float()], None, "q4_k"
    )
    _raises("expected 3 planes", torch.randn(2, 256), planes[:2], None, "q4_k")
    _raises("bias must have shape", torch.randn(2, 256), planes, torch.randn(36), "q4_k")
    _raises("unknown format", torch.randn(2, 256), planes, None, "q4_x")
    bad_rows = [planes[0], planes[1][:36].contiguous(), planes[2]]
    _raises("plane 'sm' must have shape", torch.randn(2, 256), bad_rows, None, "q4_k")


def test_cuda_kernel_failure_falls_back_to_the_reference(monkeypatch, caplog):
    # The CUDA implementation, called directly on CPU tensors: when the kernel path raises (no
    # Triton, a kernel that cannot compile or take the call), the reference answers and a WARNING
    # says so once.
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(dispatch, "qlinear_cuda", broken)
    _common.warn_kernel_fallback.cache_clear()
    planes = _planes("q8_0", 24, 64)
    x, bias = torch.randn(3, 64), torch.randn(24)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        for _ in range(2):
            out = ops._qlinear_cuda(x, planes, bias, "q8_0")
            torch.testing.assert_close(out, qlinear_reference(x, planes, bias, "q8_0"), rtol=1e-5, atol=1e-4)
    warned = [
        r for r in caplog.records if "q8_0 CUDA kernel failed (RuntimeError: no kernel for this shape)" in r.message
    ]
    assert len(warned) == 1
    with pytest.raises(ValueError, match="must be a positive multiple"):  # bad input is still an error
        ops._qlinear_cuda(torch.randn(3, 48), planes, bias, "q8_0")


def test_glu_cuda_kernel_failure_falls_back_to_the_reference(monkeypatch, caplog):
    # glu_qlinear's CUDA registration, likewise: the float32 reference answers, one WARNING
    from inductor_fuse.quant.op import glu_qlinear_reference

    planes = _planes("q8_0", 24, 64)
    x = torch.randn(3, 64)
    ref = glu_qlinear_reference(x, planes, None, "q8_0", "silu")

    def glu_broken(x, planes, bias, fmt, act=None, xa=None):  # the GLU epilogue fails: plain kernel, then the GLU
        if act:
            raise RuntimeError("no GLU kernel")
        return qlinear_reference(x, planes, bias, fmt)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel at all")

    for fake, said in ((glu_broken, "no GLU kernel"), (broken, "no kernel at all")):
        monkeypatch.setattr(dispatch, "qlinear_cuda", fake)
        _common.warn_kernel_fallback.cache_clear()
        with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
            out = ops._glu_qlinear_cuda(x, planes, None, "q8_0", "silu")
        torch.testing.assert_close(out, ref)
        assert any(said in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="act must be one of"):
        ops._glu_qlinear_cuda(x, planes, None, "q8_0", "relu")


def test_kernel_or_reference_warns_once_per_error_and_reraises_out_of_memory(caplog):
    # The body every CUDA registration shares: the reference answers a kernel that raises, one
    # WARNING per (op, error type, first line); a CUDA out-of-memory error is raised, not retried.
    def failing(message, error=RuntimeError):
        def kernel(*args):
            raise error(message)

        return kernel

    _common.warn_kernel_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        for message in ("first\ndetail", "first\nother detail", "second"):
            assert _common.kernel_or_reference("op_x", failing(message), lambda a, b: a + b, 1, 2) == 3
    said = [r.getMessage() for r in caplog.records if "op_x CUDA kernel failed" in r.getMessage()]
    assert said == [
        "inductor_fuse: the op_x CUDA kernel failed (RuntimeError: first); this call and others like it run the "
        "pure-torch reference: correct, slower",
        "inductor_fuse: the op_x CUDA kernel failed (RuntimeError: second); this call and others like it run the "
        "pure-torch reference: correct, slower",
    ]
    assert _common.kernel_or_reference("op_x", lambda a: a * 2, failing("unused"), 4) == 8
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _common.kernel_or_reference("op_x", failing("out of memory", torch.cuda.OutOfMemoryError), lambda: 0)
