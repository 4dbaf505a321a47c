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

lib = torch.ops.inductor_fuse

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
@pytest.mark.parametrize("glu_quant", [True, False], ids=["fused", "two-launches"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "int4_g32", "q5_0"])
def test_glu_quantizes_its_output(fmt, dtype, glu_quant, act_quant_calls):
    """glu_qlinear_q8_quantize_act's CUDA body: y bit for bit glu_qlinear_q8's, the int8 buffers
    bit for bit quantize_act_reference of that y (both layouts); fused (the GLU matvec's epilogue
    quantizes: no act_quant launch) or GLU then act_quant; rows past 32-tile programs (I = 96: three
    programs of one tile) and past the GLU's matvec range (a GEMM path runs, then act_quant quantizes y
    while M is within the reader's max_m; past that nothing is quantized; y the same)."""
    spec = KERNELS[fmt]
    I, K = 96, 256
    planes = _planes(fmt, 2 * I, K, seed=5)
    for M in (1, 3, spec.matvec_max_m + 1):
        x = _x((1, M, K), seed=M).to(dtype)
        xa = list(ops._quantize_act_cuda(x, spec.interleave, spec.matvec_max_m))
        want_y = ops._glu_qlinear_q8_cuda(x, planes, None, fmt, "gelu_tanh", xa, spec.interleave, spec.matvec_max_m)
        for out_il in (False, True):
            act_quant_calls.clear()
            with config.patch(glu_quant=glu_quant):
                y, *ya = ops._glu_qlinear_q8_quantize_act_cuda(
                    x, planes, None, fmt, "gelu_tanh", xa, spec.interleave, spec.matvec_max_m, out_il, 8
                )
            # y: the GLU's (bit for bit here, where both configs sum K in the same order; on a GPU
            # the quantizing programs may sum in another order: tests/kernels/test_gpu.py)
            assert torch.equal(y, want_y), (M, out_il)
            if M > 8:  # the reader's max_m (the last argument)
                assert act_quant_calls == []  # the down projection reads y (its own act_quant), not the buffers
                continue
            # the GLU's matvec quantizes in its epilogue; where another kernel runs (past the
            # matvec's M; w4a16_sync for bf16 x), that kernel, then act_quant
            fused = glu_quant and dispatch.kernel_for(fmt, M, 2 * I, K, dtype) == "matvec"
            assert act_quant_calls == ([] if fused else [(M, I)]), (M, out_il)
            for name, a, b in zip(("yq", "yd", "ys32", "ys16"), ya, quantize_act_reference(y, out_il)):
                assert a.shape == b.shape and torch.equal(a, b), f"{name}, M = {M}, interleave {out_il}"


def test_glu_quantize_act_op_is_glu_then_quantize_act():
    """The CPU op (the reference) against its parts, and its checks."""
    I, K = 64, 256
    planes = _planes("q4_k", 2 * I, K, seed=6)
    x = _x((2, K), seed=7)
    xa = list(lib.quantize_act(x, False, 8))
    y, *ya = lib.glu_qlinear_q8_quantize_act(x, planes, None, "q4_k", "silu", xa, False, 8, True, 8)
    assert torch.equal(y, lib.glu_qlinear_q8(x, planes, None, "q4_k", "silu", xa, False, 8))
    for a, b in zip(ya, lib.quantize_act(y, True, 8)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="multiple of 32"):
        planes48 = _planes("q4_k", 2 * 48, K, seed=6)
        lib.glu_qlinear_q8_quantize_act(x, planes48, None, "q4_k", "silu", xa, False, 8, True, 8)


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


# -- rmsnorm_quantize_act: quantize_act fused into the RMSNorm that makes x ----------------------------

rmsnorm_quantize_act = torch.ops.inductor_fuse.rmsnorm_quantize_act
# (cast_before_weight, w_offset): LlamaRMSNorm, models/transformer.py's RMSNorm, Gemma3RMSNorm
NORMS = {"llama": (True, 0.0), "float32-weight": (False, 0.0), "gemma": (False, 1.0)}


def _norm_inputs(M, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(M, K, generator=g) * torch.rand(K, generator=g) * 5).to(dtype)
    w = (torch.randn(K, generator=g) * 0.3 + 0.5).to(dtype)
    return h, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
def test_rmsnorm_quantize_act_reference_against_float64(norm, dtype):
    cast_first, offset = NORMS[norm]
    h, w = _norm_inputs(3, 96, dtype, seed=1)
    y, *xa = rmsnorm_quantize_act(h, w, 1e-6, offset, cast_first, False, 16)
    h64 = h.double()
    want = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + 1e-6) * (w.double() + offset)
    assert y.dtype == dtype and y.shape == h.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the casts (one or two roundings)
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol)
    for a, b in zip(xa, quantize_act_reference(y, False)):  # the int8 activation is quantize_act(y)
        assert torch.equal(a, b)


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("K", [64, 96, 640])
@pytest.mark.parametrize("M", [1, 3])
def test_rmsnorm_quantize_kernel_against_the_reference(M, K, norm, dtype):
    """The Triton kernel: y within a rounding of the reference (its sum of squares is summed in
    another order), the int8 buffers bit for bit quantize_act_reference of the y it stored."""
    cast_first, offset = NORMS[norm]
    h, w = _norm_inputs(M, K, dtype, seed=M * K)
    h[0, :32] = 0.0  # an all-zero tile of y
    for interleave in (False, True):
        y, *xa = ops._rmsnorm_quantize_act_cuda(h, w, 1e-5, offset, cast_first, interleave, 16)
        ref = rmsnorm_quantize_act(h, w, 1e-5, offset, cast_first, interleave, 16)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
        torch.testing.assert_close(y, ref[0], **tol)
        for name, a, b in zip(("xq", "xd", "xs32", "xs16"), xa, quantize_act_reference(y, interleave)):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), f"{name}: {(a != b).sum()} elements differ"


add_rmsnorm_quantize_act = torch.ops.inductor_fuse.add_rmsnorm_quantize_act


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("K", [96, 640])  # 640: the two-loop kernel under the interpreter (8 tiles a block)
@pytest.mark.parametrize("M", [1, 3])
def test_add_rmsnorm_quantize_kernel_against_the_reference(M, K, norm, dtype):
    """The residual add in the kernel: s bit for bit aten's a + b, y within a rounding of the norm
    of s, the int8 buffers bit for bit quantize_act_reference of the y it stored."""
    cast_first, offset = NORMS[norm]
    a, w = _norm_inputs(M, K, dtype, seed=M + K)
    b = _norm_inputs(M, K, dtype, seed=M + K + 1)[0]
    a = a.t().contiguous().t()  # a column-major operand: rows with a stride the kernel must follow
    s, y, *xa = ops._add_rmsnorm_quantize_act_cuda(a, b, w, 1e-5, offset, cast_first, False, 16)
    # s: aten's a + b (float32 sum rounded to nearest even); the interpreter's float32 -> bf16 cast
    # truncates (a GPU's rounds), so there bf16 sums may be one unit in the last place apart
    ulp = 2**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(s, a + b, rtol=ulp, atol=0.0)
    ref_y = rmsnorm_quantize_act(s, w, 1e-5, offset, cast_first, False, 16)[0]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(y, ref_y, **tol)
    # the int8 activation is quantize_act of the stored y, up to an exact tie (y = amax / 2, not rare
    # in bf16) that the kernel's and torch's float32 arithmetic may round to either side
    xq, xd, xs32, xs16 = xa
    want = quantize_act_reference(y, False)
    assert torch.equal(xd, want[1])
    dq = xq.view(torch.int8).int() - want[0].view(torch.int8).int()
    assert dq.abs().max() <= 1 and (dq != 0).float().mean() < 0.01, dq.abs().sum()
    for got_s, want_s in zip((xs32, xs16), want[2:]):
        torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=float(xd.max()) * 2)
    for got, want in zip((s, y, *xa), add_rmsnorm_quantize_act(a, b, w, 1e-5, offset, cast_first, False, 16)):
        assert got.shape == want.shape and got.dtype == want.dtype  # the CPU op (reference) agrees in form


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("K", [96, 640, 8224])  # 8224: a row past one block (b's norm in torch first)
@pytest.mark.parametrize("M", [1, 3])
def test_add_rmsnorm_quantize_kernel_with_the_addends_norm(M, K, norm, dtype):
    """Gemma 3's sandwich norm in the kernel: s = a + rmsnorm(b, w_b), then y = rmsnorm(s, w) and
    its int8 activation; against an independent float64 oracle of the same steps (each rounded to
    the dtype where the model rounds: rmsnorm(b) and s)."""
    if K == 8224 and (M > 1 or norm != "gemma"):
        pytest.skip("one long-row case is enough (interpreter time)")
    cast_first, offset = NORMS[norm]
    a, w = _norm_inputs(M, K, dtype, seed=M + K + 7)
    b, w_b = _norm_inputs(M, K, dtype, seed=M + K + 8)
    b = b * 40.0  # o's scale is not the residual stream's: the norm of b matters
    s, y, *xa = ops._add_rmsnorm_quantize_act_cuda(
        a, b, w, 1e-5, offset, cast_first, False, 16, w_b, 1e-6, offset, cast_first
    )

    def rms64(h, w_, eps):
        h64 = h.double()
        return h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + eps) * (w_.double() + offset)

    s_want = (a.double() + rms64(b, w_b, 1e-6).to(dtype).double()).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=2e-2)
    torch.testing.assert_close(s, s_want, **tol)
    torch.testing.assert_close(y.double(), rms64(s, w, 1e-5), **tol)  # y is the norm of the s it stored
    xq, xd, *_ = xa  # quantize_act of the stored y, up to an exact tie (as in the test above)
    want = quantize_act_reference(y, False)
    assert torch.equal(xd, want[1])
    dq = xq.view(torch.int8).int() - want[0].view(torch.int8).int()
    assert dq.abs().max() <= 1 and (dq != 0).sum() <= max(1, M * K // 100), dq.abs().sum()
    ref = add_rmsnorm_quantize_act(a, b, w, 1e-5, offset, cast_first, False, 16, w_b, 1e-6, offset, cast_first)
    torch.testing.assert_close(ref[0], s, **tol)  # the CPU op (reference) computes the same s and y
    torch.testing.assert_close(ref[1], y, **tol)
    plain = add_rmsnorm_quantize_act(a, b, w, 1e-5, offset, cast_first, False, 16)[0]
    assert not torch.allclose(plain, s, **tol)  # (b's norm changes s: the check above can fail)


def test_add_rmsnorm_quantize_act_refuses_a_bad_addend_norm():
    a, w = _norm_inputs(2, 64, torch.float32, seed=4)
    with pytest.raises(ValueError, match="b's norm: .*w must have shape"):
        add_rmsnorm_quantize_act(a, a, w, 1e-6, 0.0, False, False, 8, w[:32], 1e-6, 0.0, False)
    with pytest.raises(ValueError, match="b's norm: .*cast_before_weight takes no w_offset"):
        add_rmsnorm_quantize_act(a, a, w, 1e-6, 0.0, False, False, 8, w, 1e-6, 1.0, True)


def test_add_rmsnorm_quantize_act_refuses_operands_that_differ():
    a, w = _norm_inputs(2, 64, torch.float32, seed=4)
    with pytest.raises(ValueError, match="b must be a's shape"):
        add_rmsnorm_quantize_act(a, a[:1], w, 1e-6, 0.0, False, False, 8)
    with pytest.raises(ValueError, match="b must be a's shape"):
        add_rmsnorm_quantize_act(a, a.bfloat16(), w, 1e-6, 0.0, False, False, 8)


@pytest.fixture
def norm_quant_calls(monkeypatch):
    """Every launch of the fused kernel: (rows, quantized)."""
    from inductor_fuse.kernels import norm_quant

    calls = []
    real = norm_quant.rmsnorm_quantize

    def spy(h, w, eps, w_offset, cast_first, interleave, quant, *residual):
        calls.append((h.shape[0], quant))
        return real(h, w, eps, w_offset, cast_first, interleave, quant, *residual)

    monkeypatch.setattr(norm_quant, "rmsnorm_quantize", spy)
    return calls


@interpreter
def test_rmsnorm_quantize_cuda_body_quantizes_only_what_a_matvec_reads(norm_quant_calls):
    h, w = _norm_inputs(4, 64, torch.float32, seed=2)
    h = h.reshape(2, 2, 64)
    got = ops._rmsnorm_quantize_act_cuda(h, w, 1e-6, 1.0, False, True, 4)  # M = 4 <= max_m
    assert norm_quant_calls == [(4, True)]
    assert [tuple(t.shape) for t in got] == [(2, 2, 64), (2, 2, 16), (2, 2, 2), (2, 2, 2), (2, 2, 4)]
    norm_quant_calls.clear()
    y_only = ops._rmsnorm_quantize_act_cuda(h, w, 1e-6, 1.0, False, True, 3)  # M = 4 > max_m: y alone
    with config.patch(exact_matvec=True):
        exact = ops._rmsnorm_quantize_act_cuda(h, w, 1e-6, 1.0, False, True, 4)
    assert norm_quant_calls == [(4, False), (4, False)]
    for out in (y_only, exact):
        assert torch.equal(out[0], got[0])
        assert [(t.shape, t.dtype) for t in out] == [(t.shape, t.dtype) for t in got]


def test_rmsnorm_quantize_cuda_body_falls_back_to_the_reference(monkeypatch, caplog):
    from inductor_fuse.kernels import norm_quant

    def broken(*args, **kwargs):
        raise RuntimeError("no norm kernel")

    monkeypatch.setattr(norm_quant, "rmsnorm_quantize", broken)
    _common.warn_kernel_fallback.cache_clear()
    h, w = _norm_inputs(3, 64, torch.bfloat16, seed=3)
    with caplog.at_level(logging.WARNING, logger="inductor_fuse"):
        got = ops._rmsnorm_quantize_act_cuda(h, w, 1e-6, 0.0, True, False, 8)
        y_only = ops._rmsnorm_quantize_act_cuda(h, w, 1e-6, 0.0, True, False, 2)
    for a, b in zip(got, rmsnorm_quantize_act(h, w, 1e-6, 0.0, True, False, 8)):
        assert torch.equal(a, b)
    assert torch.equal(y_only[0], got[0])
    said = "rmsnorm_quantize_act CUDA kernel failed (RuntimeError: no norm kernel)"
    assert any(said in r.message for r in caplog.records)


def test_rmsnorm_quantize_act_fake_opcheck_and_bad_inputs():
    h, w = _norm_inputs(6, 64, torch.bfloat16, seed=4)
    h = h.reshape(2, 3, 64)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = rmsnorm_quantize_act(h, w, 1e-6, 1.0, False, True, 8)
    real = rmsnorm_quantize_act(h, w, 1e-6, 1.0, False, True, 8)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
    torch.library.opcheck(rmsnorm_quantize_act, (h, w, 1e-6, 1.0, False, True, 8))
    torch.library.opcheck(rmsnorm_quantize_act, (h, w, 1e-6, 0.0, True, False, 8))
    ht = h.transpose(0, 1)  # not contiguous: y is (the fake's strides)
    torch.library.opcheck(rmsnorm_quantize_act, (ht, w, 1e-6, 1.0, False, False, 8))
    assert rmsnorm_quantize_act(ht, w, 1e-6, 1.0, False, False, 8)[0].is_contiguous()
    with pytest.raises(ValueError, match="w must have shape \\[64\\]"):
        rmsnorm_quantize_act(h, w[:32], 1e-6, 0.0, False, False, 8)
    with pytest.raises(ValueError, match="cast_before_weight needs w in h's dtype"):
        rmsnorm_quantize_act(h, w.float(), 1e-6, 0.0, True, False, 8)
    with pytest.raises(ValueError, match="positive multiple of 32"):
        rmsnorm_quantize_act(torch.randn(2, 48), torch.randn(48), 1e-6, 0.0, False, False, 8)
