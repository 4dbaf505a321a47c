"""torch.ops.inductor_fuse.quantize_act (the activation quantized once, for the act_quant rule) and its
consumers qlinear_q8 / glu_qlinear_q8: the pure-torch body is bit-identical to the Triton kernel
(`_common.act_quant`, under TRITON_INTERPRET=1); the CUDA bodies, called on CPU tensors, compute
only what a consumer reads and the consumers' matvec reads the given activation instead of
quantizing x again, with the same result bit for bit."""

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from inductor_fuse import config
from inductor_fuse.kernels import _common, dispatch, ops
from inductor_fuse.kernels._common import act_quant, act_quant_reference, interpreting
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.quant.formats import FORMATS
from inductor_fuse.quant.op import qlinear_reference, quantize_act_reference

quantize_act = torch.ops.inductor_fuse.quantize_act
qlinear_q8 = torch.ops.inductor_fuse.qlinear_q8
glu_qlinear_q8 = torch.ops.inductor_fuse.glu_qlinear_q8

interpreter = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")


def _x(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.rand(shape[-1] // 32, generator=g).repeat_interleave(32) * 4
    return x.to(dtype)


def _dequantized(xq, xd, interleave):
    """d * q in natural order, [M, K] float32, from quantize_act's buffers."""
    M, G = xd.shape
    q = xq.view(torch.int8).float().reshape(M, G, 32)
    if interleave:  # element l is stored at (l%2)*16 + (l//8)*4 + (l%8)//2
        l = torch.arange(32)
        q = q[..., (l % 2) * 16 + (l // 8) * 4 + (l % 8) // 2]
    return (q * xd[..., None]).reshape(M, G * 32)


@interpreter
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("K", [32, 96, 4096])
@pytest.mark.parametrize("M", [1, 3, 7])
def test_cpu_body_is_bit_identical_to_the_kernel(M, K, interleave):
    x = _x((M, K), seed=M * K)
    x[0, :32] = 0.0  # an all-zero tile: d = 0, q = 0
    if K > 32:
        # amax 127: x / d is x itself, so these are exact halves (round half away from zero) and 0
        x[-1, 32:64] = torch.tensor([127.0, 0.0] + [k + 0.5 for k in range(-15, 15)])
    got = quantize_act(x, interleave, 16)
    ref = act_quant(x, interleave=interleave)
    for name, a, b in zip(("xq", "xd", "xs32", "xs16"), got, (ref.xq, ref.xd, ref.xs32, ref.xs16)):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name}: {(a != b).sum()} elements differ"
    torch.testing.assert_close(_dequantized(got[0], got[1], interleave), act_quant_reference(x), rtol=0, atol=0)


@interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_and_leading_dims(dtype):
    x = _x((2, 3, 128), seed=5, dtype=dtype)
    got = quantize_act(x, False, 8)
    assert [tuple(t.shape) for t in got] == [(2, 3, 32), (2, 3, 4), (2, 3, 4), (2, 3, 8)]
    ref = act_quant(x.reshape(6, 128))
    for a, b in zip(got, (ref.xq, ref.xd, ref.xs32, ref.xs16)):
        assert torch.equal(a.reshape(b.shape), b)


def test_fake_shapes_opcheck_and_bad_inputs():
    x = torch.randn(2, 3, 64)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = quantize_act(x, True, 8)
    real = quantize_act(x, True, 8)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
    torch.library.opcheck(quantize_act, (x, True, 8))
    planes = list(FORMATS["q8_0"].quantize(torch.randn(24, 64)))
    torch.library.opcheck(qlinear_q8, (x, planes, torch.randn(24), "q8_0", list(real), True, 8))
    torch.library.opcheck(glu_qlinear_q8, (x, planes, None, "q8_0", "silu", list(real), True, 8))
    with pytest.raises(ValueError, match="positive multiple of 32"):
        quantize_act(torch.randn(2, 48), False, 8)
    with pytest.raises(ValueError, match="must be float32"):
        quantize_act(torch.ones(2, 32, dtype=torch.int32), False, 8)
    with pytest.raises(ValueError, match="xd must be torch.float32 of shape"):
        qlinear_q8(x, planes, None, "q8_0", [real[0], real[1][:1], real[2], real[3]], True, 8)
    with pytest.raises(ValueError, match="expected 4 tensors"):
        qlinear_q8(x, planes, None, "q8_0", list(real[:3]), True, 8)


@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "int4_g32"])
def test_cpu_consumers_are_the_reference_on_x(fmt):
    """On CPU the consumers ignore the int8 activation: exactly qlinear / glu_qlinear."""
    planes = list(FORMATS[fmt].quantize(torch.randn(2 * 20, 256)))
    x, bias = torch.randn(1, 3, 256), torch.randn(40)
    il = KERNELS[fmt].interleave
    xa = list(quantize_act(x, il, 16))
    torch.testing.assert_close(
        qlinear_q8(x, planes, bias, fmt, xa, il, 16),
        torch.ops.inductor_fuse.qlinear(x, planes, bias, fmt),
        rtol=0,
        atol=0,
    )
    glu = torch.ops.inductor_fuse.glu_qlinear(x, planes, bias, fmt, "gelu_tanh")
    torch.testing.assert_close(glu_qlinear_q8(x, planes, bias, fmt, "gelu_tanh", xa, il, 16), glu, rtol=0, atol=0)


@pytest.fixture
def act_quant_calls(monkeypatch):
    """Every launch of the act_quant kernel, from the CUDA bodies (ops) and from dispatch."""
    calls = []

    def spy(x, interleave=False):
        calls.append(tuple(x.shape))
        return _common.act_quant(x, interleave=interleave)

    monkeypatch.setattr(ops, "act_quant", spy)
    monkeypatch.setattr(dispatch, "act_quant", spy)
    return calls


@interpreter
def test_cuda_body_computes_only_what_a_matvec_reads(act_quant_calls):
    x = _x((2, 2, 64), seed=1)
    got = ops._quantize_act_cuda(x, False, 4)  # M = 4 <= max_m: the kernel runs
    assert act_quant_calls == [(4, 64)]
    for a, b in zip(got, quantize_act_reference(x, False)):
        assert torch.equal(a, b)
    shapes = [(t.shape, t.dtype) for t in got]
    act_quant_calls.clear()
    skipped = ops._quantize_act_cuda(x, False, 3)  # M = 4 > max_m: every consumer runs its GEMM
    with config.patch(exact_matvec=True):  # every consumer runs its GEMM
        exact = ops._quantize_act_cuda(x, False, 4)
    assert act_quant_calls == []
    assert [(t.shape, t.dtype) for t in skipped] == [(t.shape, t.dtype) for t in exact] == shapes


def test_cuda_body_falls_back_to_the_reference(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no act_quant kernel")

    monkeypatch.setattr(ops, "act_quant", broken)
    _common.warn_kernel_fallback.cache_clear()
    x = torch.randn(3, 64)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        for _ in range(2):
            got = ops._quantize_act_cuda(x, True, 8)
            assert all(torch.equal(a, b) for a, b in zip(got, quantize_act_reference(x, True)))
    said = "act_quant CUDA kernel failed (RuntimeError: no act_quant kernel)"
    assert sum(said in r.message for r in caplog.records) == 1


def _planes(fmt, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    return list(FORMATS[fmt].quantize(torch.randn(N, K, generator=g)))


@interpreter
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "int4_g32", "iq4_xs"])
def test_consumers_read_the_given_activation(fmt, act, act_quant_calls):
    """The q8 CUDA bodies: the matvec on the given activation, no act_quant of their own; the same
    result, bit for bit, as qlinear / glu_qlinear's CUDA body quantizing x itself. Above the
    matvec range the GEMM reads x (and the unread buffers do not matter)."""
    spec = KERNELS[fmt]
    N, K = 2 * 19, 256
    planes = _planes(fmt, N, K, seed=3)
    bias = torch.randn(N)

    def plain(x):
        if act is None:
            return ops._qlinear_cuda(x, planes, bias, fmt)
        return ops._glu_qlinear_cuda(x, planes, bias, fmt, act)

    def q8(x, xa, max_m=spec.matvec_max_m):
        if act is None:
            return ops._qlinear_q8_cuda(x, planes, bias, fmt, xa, spec.interleave, max_m)
        return ops._glu_qlinear_q8_cuda(x, planes, bias, fmt, act, xa, spec.interleave, max_m)

    for M in (1, 3, spec.matvec_max_m + 1):
        x = _x((1, M, K), seed=M)
        act_quant_calls.clear()
        xa = list(ops._quantize_act_cuda(x, spec.interleave, spec.matvec_max_m))
        got = q8(x, xa)
        assert act_quant_calls == ([(M, K)] if M <= spec.matvec_max_m else []), M
        ref = plain(x)
        assert got.shape == ref.shape and torch.equal(got, ref), f"M = {M}"
        if M > 1:  # an activation quantize_act did not fill (M > its max_m): the call quantizes x itself
            xa_small = list(ops._quantize_act_cuda(x, spec.interleave, 1))
            assert torch.equal(q8(x, xa_small, max_m=1), ref), f"M = {M}, max_m 1"
    x = _x((2, K), seed=9)
    w = FORMATS[fmt].dequantize(planes)
    if act is None:  # and what the matvec computes: x quantized, times the dequantized weight
        xa = list(ops._quantize_act_cuda(x, spec.interleave, spec.matvec_max_m))
        want = act_quant_reference(x) @ w.T + bias
        torch.testing.assert_close(q8(x, xa), want, rtol=1e-5, atol=1e-4)


def test_q8_cuda_bodies_fall_back_to_the_reference(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel here")

    monkeypatch.setattr(dispatch, "qlinear_cuda", broken)
    _common.warn_kernel_fallback.cache_clear()
    planes = _planes("q8_0", 24, 64, seed=1)
    x = torch.randn(3, 64)
    xa = list(quantize_act(x, False, 8))
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        out = ops._qlinear_q8_cuda(x, planes, None, "q8_0", xa, False, 8)
        glu = ops._glu_qlinear_q8_cuda(x, planes, None, "q8_0", "silu", xa, False, 8)
    torch.testing.assert_close(out, qlinear_reference(x, planes, None, "q8_0"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(glu, torch.ops.inductor_fuse.glu_qlinear(x, planes, None, "q8_0", "silu"))
    assert any("no kernel here" in r.message for r in caplog.records)


def test_q8_cuda_body_refuses_an_activation_of_another_layout():
    """int4_g32's matvec reads x interleaved; an activation quantized in natural order is a wrong
    graph: a ValueError, not a wrong result."""
    planes = _planes("int4_g32", 8, 64, seed=2)
    x = torch.randn(1, 64)
    xa = list(quantize_act(x, False, 8))
    with pytest.raises(ValueError, match="interleave=False, the int4_g32 matvec reads interleave=True"):
        ops._qlinear_q8_cuda(x, planes, None, "int4_g32", xa, False, 8)
