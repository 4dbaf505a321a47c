"""Q4_0 and IQ4_XS Triton kernels on the CPU under TRITON_INTERPRET=1: the W4A8 matvec, the fused
GEMM and the dequant kernel against float64 references; the IQ4_XS grid lookup's PTX (which only a
GPU runs) simulated instruction by instruction against the grid."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from numerics import rel_err

from inductor_fuse.kernels import dispatch, iq4_xs
from inductor_fuse.kernels._common import MatvecConfig, act_quant_reference, interpreting
from inductor_fuse.kernels.gemm import dequantize_rows, qgemm
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.quant.formats import FORMATS
from inductor_fuse.quant.iq4_xs import KVALUES

pytestmark = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")

NAMES = ["q4_0", "iq4_xs"]
# N not a multiple of any block; K = 288 (9 blocks of 32) only for Q4_0 (IQ4_XS needs K % 256 == 0)
SHAPES = {"q4_0": [(37, 288, 1), (19, 512, 3), (37, 256, 17)], "iq4_xs": [(37, 256, 1), (19, 512, 3), (37, 256, 17)]}


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
    N, K, M = 11, 1024, 2  # the split-K configs: 2 programs of block_n = 8 along N, the second masked
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


# ---- the IQ4_XS grid lookup ------------------------------------------------------------------


def _expected_lookup(words: np.ndarray) -> tuple[np.ndarray, ...]:
    # words uint32 [n] -> (a_lo, b_lo, a_hi, b_hi) uint32, byte k of the lo words from nibble k, of
    # the hi words from nibble 4 + k: A = KVALUES[code] for code < 8, else -1; B = KVALUES[code] + 1
    # for code >= 8, else 0 (so A + B = KVALUES[code], byte by byte)
    kv = np.array(KVALUES, dtype=np.int64)
    a_tab = np.where(np.arange(16) < 8, kv, -1).astype(np.int8).view(np.uint8).astype(np.uint32)
    b_tab = np.where(np.arange(16) >= 8, kv + 1, 0).astype(np.int8).view(np.uint8).astype(np.uint32)
    codes = [(words >> np.uint32(4 * k)) & np.uint32(0xF) for k in range(8)]

    def pack(tab, first):
        return sum(tab[codes[first + k]] << np.uint32(8 * k) for k in range(4)).astype(np.uint32)

    return pack(a_tab, 0), pack(b_tab, 0), pack(a_tab, 4), pack(b_tab, 4)


def _bytes_i8(w: np.ndarray) -> np.ndarray:
    return w.astype(np.uint32).view(np.uint8).view(np.int8).reshape(-1, 4).astype(np.int64)


def test_iq4_xs_half_tables_sum_to_the_grid():
    # the premise of the lookup: A + B is the grid, for each of the 16 codes
    words = np.array([sum(c << (4 * k) for k in range(8)) for c in range(16)], dtype=np.uint32)
    a_lo, b_lo, a_hi, b_hi = _expected_lookup(words)
    grid = (_bytes_i8(a_lo) + _bytes_i8(b_lo))[:, 0]
    assert grid.tolist() == list(KVALUES)
    assert np.array_equal(_bytes_i8(a_hi) + _bytes_i8(b_hi), _bytes_i8(a_lo) + _bytes_i8(b_lo))


def _lookup_words() -> np.ndarray:
    # every pair of codes at every two neighbouring nibbles, every byte repeated, random words
    c = np.arange(256, dtype=np.uint32)
    structured = [c << np.uint32(4 * k) for k in range(7)] + [c * np.uint32(0x01010101)]
    rand = np.random.default_rng(0).integers(0, 1 << 32, 4096, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([*structured, rand, np.array([0, 0xFFFFFFFF], dtype=np.uint32)])


def _prmt_np(a, b, s):
    ab = a.astype(np.uint64) | (b.astype(np.uint64) << np.uint64(32))
    r = np.zeros_like(a, dtype=np.uint32)
    for k in range(4):
        sel = (s >> np.uint32(4 * k)) & np.uint32(0xF)
        byte = ((ab >> (np.uint64(8) * (sel & np.uint32(7)).astype(np.uint64))) & np.uint64(0xFF)).astype(np.uint32)
        sign = np.where(byte & np.uint32(0x80), np.uint32(0xFF), np.uint32(0))
        byte = np.where(sel & np.uint32(8), sign, byte)
        r |= byte << np.uint32(8 * k)
    return r


def _lop3_np(a, b, c, lut):
    r = np.zeros_like(a)
    for idx in range(8):
        if lut >> idx & 1:
            r |= (a if idx & 4 else ~a) & (b if idx & 2 else ~b) & (c if idx & 1 else ~c)
    return r


def _run_ptx(ptx: str, regs: dict) -> dict:
    """A tiny simulator of the PTX subset the lookup uses (PTX ISA semantics, uint32 registers)."""

    def val(tok):
        return np.uint32(int(tok, 0)) if tok[0].isdigit() else regs[tok]

    for line in ptx.splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dst, *src = [t.strip() for t in rest.split(",")]
        src = [val(t) for t in src]
        if op == "and.b32":
            r = src[0] & src[1]
        elif op == "xor.b32":
            r = src[0] ^ src[1]
        elif op == "dp4a.s32.s32":
            prods = (_bytes_i8(src[0]) * _bytes_i8(src[1])).sum(axis=1)
            r = (prods + np.asarray(src[2]).astype(np.uint32).view(np.int32).astype(np.int64)).astype(np.int64)
            r = r.astype(np.int32).view(np.uint32)
        elif op == "shr.u32":
            r = src[0] >> src[1]
        elif op == "shl.b32":
            r = src[0] << src[1]
        elif op == "prmt.b32":
            r = _prmt_np(*src)
        elif op == "lop3.b32":
            r = _lop3_np(src[0], src[1], src[2], int(src[3]))
        else:
            raise AssertionError(f"unexpected PTX instruction {op!r}")
        regs[dst] = np.asarray(r, dtype=np.uint32)
    return regs


def test_iq4_xs_lookup_ptx_simulated():
    words = _lookup_words()
    table = np.array([iq4_xs._KV_W0, iq4_xs._KV_W1, iq4_xs._TB_W0, iq4_xs._TB_W1], dtype=np.int64).astype(np.uint32)
    regs = {"$4": words, **{f"${5 + j}": np.full_like(words, table[j]) for j in range(4)}}
    regs = _run_ptx(iq4_xs._LOOKUP_PTX.value, regs)
    for j, exp in enumerate(_expected_lookup(words)):
        assert np.array_equal(regs[f"${j}"], exp), f"output ${j}"


def test_iq4_xs_dp4a_chain_ptx_simulated():
    # the row dot's four chained dp4a: A and B of codes 0-3 with one x word, of codes 4-7 with another
    rng = np.random.default_rng(1)
    words = rng.integers(0, 1 << 32, (6, 512), dtype=np.uint64).astype(np.uint32)
    regs = _run_ptx(iq4_xs._DP4A4_PTX.value, {f"${1 + j}": words[j] for j in range(6)})
    b = [_bytes_i8(w) for w in words]
    exp = ((b[0] + b[1]) * b[2] + (b[3] + b[4]) * b[5]).sum(axis=1)
    assert np.array_equal(regs["$0"].view(np.int32).astype(np.int64), exp)


@triton.jit
def _lookup_kernel(w_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    w = tl.load(w_ptr + offs)
    z = w * 0
    out = iq4_xs.iq4nl_lookup(w, z ^ iq4_xs._KV_W0, z ^ iq4_xs._KV_W1, z ^ iq4_xs._TB_W0, z ^ iq4_xs._TB_W1, False)
    for j in tl.static_range(4):
        tl.store(out_ptr + j * n + offs, out[j])


def test_iq4_xs_lookup_emulation():
    # the interpreter's path (prmt emulated with shifts and selects), on the same words
    words = _lookup_words()
    n = -(-len(words) // 256) * 256
    w = torch.from_numpy(np.resize(words, n).view(np.int32).copy())
    out = torch.empty(4, n, dtype=torch.int32)
    _lookup_kernel[(n // 256,)](w, out, n, BLOCK=256)
    for j, exp in enumerate(_expected_lookup(w.numpy().view(np.uint32))):
        assert np.array_equal(out[j].numpy().view(np.uint32), exp), f"output {j}"
