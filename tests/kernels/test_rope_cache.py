"""torch.ops.inductor_fuse.rope_cache_write: the CPU reference against a float64 oracle that rotates
each pair (i, i + D/2) by its angle, and the Triton kernel against the reference (CPU under
TRITON_INTERPRET=1, GPU with INDUCTOR_FUSE_GPU_TESTS=1): query, written cache rows, and every
other cache row left as it was."""

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import inductor_fuse.rope_cache  # noqa: F401 -- defines the op
from inductor_fuse.kernels import rope_cache as kernel
from inductor_fuse.kernels._common import interpreting
from inductor_fuse.rope_cache import check_rope_cache_write_args, rope_cache_write_reference

op = torch.ops.inductor_fuse.rope_cache_write
GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
kernel_runs = pytest.mark.skipif(not (interpreting() or GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
SENTINEL = 7.0  # cache rows that are not written keep it


def make(B=1, S=1, Hq=4, Hkv=1, D=64, T=16, dtype=torch.bfloat16, norm="float", kv_dtype=None, cos_b=1, seed=0):
    """The op's arguments: q, k, v as views of one fused projection output (strided), cos / sin of
    real angles (rotate-half layout), the norm's weights, a cache full of SENTINEL, positions."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, generator=g).to(dtype)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    k = qkv[..., Hq * D : (Hq + Hkv) * D].view(B, S, Hkv, D)
    v = qkv[..., (Hq + Hkv) * D :].view(B, S, Hkv, D)
    pos = torch.randperm(T, generator=g)[:S]
    inv = 1.0 / 10000 ** (torch.arange(D // 2, dtype=torch.float64) * 2 / D)
    ang = (pos.double()[:, None] + torch.rand(cos_b, S, 1, generator=g).double()) * inv  # [cos_b, S, D/2]
    ang = torch.cat([ang, ang], -1)[:, :, None, :]  # [cos_b, S, 1, D]
    cos, sin = ang.cos().float(), ang.sin().float()
    q_w = k_w = None
    if norm is not None:
        wdt = dtype if norm == "cast_first" else torch.float32
        q_w = (1 + 0.3 * torch.randn(D, generator=g)).to(wdt)
        k_w = (1 + 0.3 * torch.randn(D, generator=g)).to(wdt)
    kv = torch.full((2, B, Hkv, T, D), SENTINEL, dtype=kv_dtype or dtype)
    eps, offset = 1e-6, (1.0 if norm == "offset" else 0.0)
    return [q, k, v, cos, sin, q_w, k_w, eps, offset, norm == "cast_first", kv, pos]


def oracle(q, k, v, cos, sin, q_w, k_w, eps, w_offset, cast_first, kv, pos):
    """float64: each pair (x_i, x_{i+D/2}) rotated by angle a_i (cos a_i, sin a_i), after the norm
    (rounded to the row dtype where the model's code rounds); the new cache rows."""
    D = q.shape[-1]

    def rot(x, w):
        xd = x.double()
        if w is not None:
            n = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
            n = n.to(x.dtype).double() * w.double() if cast_first else n * (w.double() + w_offset)
            xd = n.to(x.dtype).double()
        x1, x2 = xd[..., : D // 2], xd[..., D // 2 :]
        c, s = cos.double()[..., : D // 2], sin.double()[..., : D // 2]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    return rot(q, q_w), rot(k, k_w), v.double()


def check(args, q_out, kv_out, tol):
    """q_out and kv_out against the oracle; the rows at positions not written still hold SENTINEL."""
    q_ref, k_ref, v_ref = oracle(*args)
    pos = args[-1]
    torch.testing.assert_close(q_out.double(), q_ref, atol=tol, rtol=tol)
    written = kv_out[:, :, :, pos].double()  # [2, B, Hkv, S, D]
    torch.testing.assert_close(written[0], k_ref.transpose(1, 2), atol=tol, rtol=tol)
    torch.testing.assert_close(written[1], v_ref.transpose(1, 2), atol=tol, rtol=tol)
    keep = torch.ones(kv_out.shape[3], dtype=torch.bool)
    keep[pos] = False
    assert (kv_out[:, :, :, keep] == SENTINEL).all()


TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}  # |values| ~ 1-4: a few ulps

CASES = [  # (B, S, Hq, Hkv, D, norm, cos_b)
    (1, 1, 4, 1, 256, "float", 1),  # Gemma-3-270M
    (1, 1, 32, 8, 128, None, 1),  # Llama-3-8B
    (2, 3, 6, 2, 64, "cast_first", 2),  # batch, a draft of 3 tokens, per-batch angles
    (1, 2, 3, 3, 80, "offset", 1),  # D / 2 = 40: not a power of two; MHA
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,S,Hq,Hkv,D,norm,cos_b", CASES)
def test_reference_against_float64(B, S, Hq, Hkv, D, norm, cos_b, dtype):
    args = make(B, S, Hq, Hkv, D, dtype=dtype, norm=norm, cos_b=cos_b)
    q_out = op(*args)
    assert q_out.shape == (B, S, Hq, D) and q_out.dtype == dtype
    check(args, q_out, args[10], TOL[dtype])


def _on_device(args):
    dev = "cpu" if interpreting() else "cuda"
    return [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]


@kernel_runs
@pytest.mark.parametrize("kv_dtype", [None, torch.float32], ids=["kv-same", "kv-f32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,S,Hq,Hkv,D,norm,cos_b", CASES)
def test_kernel_against_the_reference(B, S, Hq, Hkv, D, norm, cos_b, dtype, kv_dtype):
    args = make(B, S, Hq, Hkv, D, dtype=dtype, norm=norm, kv_dtype=kv_dtype, cos_b=cos_b)
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    q_ref = rope_cache_write_reference(*ref_args)
    dev_args = _on_device(args)
    q_out = kernel.rope_cache_write_cuda(*dev_args).cpu()
    kv_out = dev_args[10].cpu()
    check(args, q_out, kv_out, TOL[dtype])
    # against the reference: the same roundings, so at most one ulp of the row dtype apart
    ulp = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(q_out, q_ref, atol=ulp * 4, rtol=ulp)
    torch.testing.assert_close(kv_out, ref_args[10], atol=ulp * 4, rtol=ulp)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="the op runs the kernel on CUDA tensors only (on the CPU, its reference)")
def test_the_op_on_the_device_writes_the_cache_in_place():
    args = _on_device(make(1, 1, 4, 1, 256))
    kv = args[10]
    before = kv.data_ptr()
    q_out = op(*args)
    assert kv.data_ptr() == before and not (kv == SENTINEL).all()
    check(make(1, 1, 4, 1, 256), q_out.cpu(), kv.cpu(), TOL[torch.bfloat16])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.__setitem__(0, a[0][..., :63]), "even D"),
        (lambda a: a.__setitem__(1, a[1].float()), "share one float dtype"),
        (lambda a: a.__setitem__(3, a[3][:, :, :, :32]), "cos must be"),
        (lambda a: a.__setitem__(6, None), "both be given"),
        (lambda a: a.__setitem__(10, a[10][:1]), "kv must be"),
        (lambda a: a.__setitem__(11, a[11].float()), "pos must be"),
        (lambda a: a.__setitem__(5, a[5][:32]), "q_w must be"),
    ],
)
def test_bad_arguments_are_named(change, message):
    args = make(1, 1, 4, 1, 64)
    change(args)
    with pytest.raises(ValueError, match=message):
        check_rope_cache_write_args(*args)
    with pytest.raises(ValueError, match=message):
        op(*args)


def test_fake_gives_the_query_shape():
    mode = FakeTensorMode()
    args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in make(2, 3, 8, 2, 128, norm=None)]
    with mode:
        out = op(*args)
    assert out.shape == (2, 3, 8, 128) and out.dtype == torch.bfloat16
