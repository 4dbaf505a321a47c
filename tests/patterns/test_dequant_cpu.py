"""Rule family `dequant_cpu`: on CPU a quantized linear over frozen weights runs as a float GEMM on
the weight dequantized once at compile time (freezing folds the dequantization); times one row of x,
as one reduction over the weight's int8 codes (folded once), dequantized inside the sum."""

import re

import pytest
import torch
from numerics import rel_err
from torch._inductor.utils import run_and_get_code
from toy_models import TinyLlama

import inductor_fuse
from inductor_fuse.patterns import dequant_cpu
from inductor_fuse.quant.formats import FORMATS

FAMILY = "dequant_cpu"


@pytest.fixture
def dequantize_calls(monkeypatch):
    """How often any weight is dequantized (every format's WeightFormat.dequantize)."""
    calls = []
    for fmt in {type(f) for f in FORMATS.values()}:
        original = fmt.dequantize
        monkeypatch.setattr(fmt, "dequantize", lambda self, planes, _o=original: calls.append(1) or _o(self, planes))
    return calls


def _model(fmt="q4_k", n_layers=2):
    torch.manual_seed(0)
    model = TinyLlama(n_layers=n_layers, dim=256, hidden=512).eval()
    inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt=fmt))
    return model


@pytest.mark.parametrize("fmt", ["q4_k", "q8_0", "int4_g32", "q5_k", "q4_1"])
def test_weights_are_dequantized_once_at_compile_time(fmt, dequantize_calls):
    model = _model(fmt)
    x = torch.randn(1, 3, 256)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, backend="inductor_fuse")
        _, (code,) = run_and_get_code(compiled, x)
        dequantize_calls.clear()
        got = [compiled(x) for _ in range(3)]
    assert not dequantize_calls  # folded into constants: no dequantization per call
    call = code[code.index("def call(") :]
    # float GEMMs on frozen weights (gate|up, 1 MiB: sliced_linear)
    assert set(re.findall(r"torch\.ops\.inductor_fuse\.(\w+)", call)) == {"sliced_linear"}, call
    assert "extern_kernels.mm" in call, call
    assert all(rel_err(g, ref) < 1e-5 for g in got)
    counts = inductor_fuse.last_report().counts
    # per layer: the fused QKV (siblings), the GLU's interleaved gate|up (glu), o_proj and down_proj
    assert counts[FAMILY] == 4 * 2 and counts["siblings"] == 2 and counts["glu"] == 2, counts


def test_past_the_memory_budget_the_reference_runs(monkeypatch, dequantize_calls):
    monkeypatch.setattr(dequant_cpu, "available_memory", lambda: 4 * 600 * 1024)  # budget: 600 KiB
    model = _model(n_layers=1)
    x = torch.randn(1, 3, 256)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, backend="inductor_fuse")
        compiled(x)
        dequantize_calls.clear()
        got = compiled(x)
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    # in graph order: the fused qkv (512 x 256 float32, 512 KiB) fits; then 88 KiB are left, less
    # than o_proj (256 KiB), gate|up (1 MiB), down_proj (512 KiB) need
    assert rep.counts[FAMILY] == 1, str(rep)
    reasons = [s.reason for s in rep.skipped if s.family == FAMILY]
    assert len(reasons) == 3 and all("memory budget" in r for r in reasons), reasons
    assert len(dequantize_calls) == 3  # the three left run the reference, dequantizing per call


def test_the_option_turns_it_off(dequantize_calls):
    model = _model(n_layers=1)
    x = torch.randn(1, 3, 256)
    with torch.no_grad():
        compiled = torch.compile(model, backend="inductor_fuse", options={FAMILY: False})
        compiled(x)
        dequantize_calls.clear()
        compiled(x)
    assert inductor_fuse.last_report().counts[FAMILY] == 0
    assert len(dequantize_calls) == 4


def test_planes_given_at_run_time_are_left_alone():
    """Planes that are inputs of the graph, not frozen weights, cannot be folded."""
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256)))

    def f(x, qs, sm, dm):
        return torch.ops.inductor_fuse.qlinear(x, [qs, sm, dm], None, "q4_k")

    x = torch.randn(2, 256)
    got = torch.compile(f, backend="inductor_fuse")(x, *planes)
    assert rel_err(got, f(x, *planes)) < 1e-6
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == 0
    assert any(s.family == FAMILY and "not a frozen constant" in s.reason for s in rep.skipped), str(rep)


@pytest.mark.parametrize("M", [2, dequant_cpu.MAX_M, dequant_cpu.MAX_M + 1])
def test_large_weights_times_a_few_rows_run_sliced(monkeypatch, M):
    # Every weight counts as large here: from 2 up to MAX_M rows, the linears without a bias (o_proj,
    # gate|up, down_proj) run sliced_linear, equal to the mm they replace up to float32 rounding
    # (MKL's summation order); above, one mm.
    model = _model(n_layers=1)
    copy = _model(n_layers=1)
    x = torch.randn(1, M, 256)
    with torch.no_grad():
        plain = torch.compile(model, backend="inductor_fuse")(x)
        monkeypatch.setattr(dequant_cpu, "SPLIT_BYTES", 0)
        got, (code,) = run_and_get_code(torch.compile(copy, backend="inductor_fuse"), x)
    call = code[code.index("def call(") :]
    sliced = 3 if M <= dequant_cpu.MAX_M else 0
    assert call.count("torch.ops.inductor_fuse.sliced_linear.default(") == sliced, call
    assert (got - plain).abs().max() <= 1e-5 * plain.abs().max()
    details = [r.detail for r in inductor_fuse.last_report().rewrites if r.family == FAMILY]
    # o_proj [256, 256] and down_proj [256, 512]: 4 slices of 64 rows; gate|up [1024, 256]: 8
    slices = sorted(d.split("over ")[1].split(",")[0] for d in details if "sliced_linear" in d)
    assert slices == ["4 slices of its rows", "4 slices of its rows", "8 slices of its rows"][:sliced], details


@pytest.mark.parametrize(("N", "slices"), [(262144, 8), (151936, 2), (128256, 6), (32000, 5), (50257, 1), (448, 7)])
def test_slices_are_multiples_of_row_align(N, slices):
    nbytes = dequant_cpu.SPLIT_BYTES
    assert dequant_cpu._slices(torch.empty(1, 1, 640), N, nbytes) == slices
    assert dequant_cpu._slices(torch.empty(1, 1, 640), N, nbytes - 1) == 1
    assert dequant_cpu._slices(torch.empty(dequant_cpu.MAX_M + 1, 640), N, nbytes) == 1
    assert dequant_cpu._slices(torch.empty(1, 640, dtype=torch.bfloat16), N, nbytes) == 1


# Q4_K (an offset), Q6_K (16-weight groups), Q8_0 (its plane is the codes), Q4_1 (a 32-block
# offset), IQ4_NL (a grid); every format's codes against gguf:
# tests/quant/test_dequantize.py::test_codes_are_the_weights_of_gguf
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k", "q8_0", "q4_1", "iq4_nl"])
def test_one_row_reads_the_int8_codes(fmt, dequantize_calls):
    """Times one row of x, a weight is never a float constant: the compiled code reads int8 codes
    (Q8_0: its own plane) and float32 scales folded once, and one C++ reduction per linear
    dequantizes inside its sum. Against eager (the reference op: dequantize, F.linear) within
    float32 summation order; the weights themselves are bit-identical (codes_to_float)."""
    model = _model(fmt, n_layers=1)
    x = torch.randn(1, 1, 256)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, backend="inductor_fuse")
        got, (code,) = run_and_get_code(compiled, x)
        dequantize_calls.clear()
        again = compiled(x + 1)
    assert not dequantize_calls
    assert rel_err(got, ref) < 1e-5
    assert rel_err(again, model(x + 1)) < 1e-5
    call = code[code.index("def call(") :]
    assert "extern_kernels.mm" not in call and "sliced_linear" not in call, call
    assert "torch.ops.inductor_fuse" not in call, call  # realize lowers to nothing, weight_codes is folded
    # the constants the code declares: int8 codes [N, K] for each linear, no float32 [N, K]
    consts = re.findall(r"_frozen_param\d+ = None  # device\(type='cpu'\) torch\.(\w+) \(([\d, ]+)\)", code)
    shapes = {(dtype, tuple(int(d) for d in shape.split(",") if d.strip())) for dtype, shape in consts}
    weights = [(512, 256), (256, 256), (2 * 512, 256), (256, 512)]  # q|k|v, o, gate|up (interleaved), down
    for n, k in weights:
        assert ("int8", (n, k)) in shapes, (n, k, shapes)
        assert ("float32", (n, k)) not in shapes, (n, k, shapes)
    rep = inductor_fuse.last_report()
    details = [r.detail for r in rep.rewrites if r.family == FAMILY]
    assert len(details) == 4 and all("one reduction over its int8 codes" in d for d in details), details


def test_realize_is_not_folded_and_lowers_to_a_buffer():
    """`realize` keeps a frozen int8 weight as stored (freezing folds what precedes it, not it) and
    makes its input a buffer: x's RMSNorm is computed once, not inside the reduction."""
    torch.manual_seed(0)
    codes = torch.nn.Parameter(torch.randint(-8, 8, (64, 32), dtype=torch.int8), requires_grad=False)
    w = torch.nn.Parameter(torch.rand(32), requires_grad=False)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.codes, self.w = codes, w

        def forward(self, x):
            h = torch.ops.inductor_fuse.realize(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * self.w)
            q = torch.ops.inductor_fuse.realize(self.codes + 1)  # folded up to realize: int8 codes + 1
            return (q.float() * h).sum(-1)

    m = M().eval()
    x = torch.randn(1, 32)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        got, (code,) = run_and_get_code(torch.compile(m), x)
    assert torch.allclose(got, m(x), rtol=1e-5, atol=1e-5)
    call = code[code.index("def call(") :]
    assert "inductor_fuse" not in call, call
    assert re.search(r"_frozen_param\d+ = None  # device\(type='cpu'\) torch\.int8 \(64, 32\)", code), code
    # h has a buffer of its own, which the reduction loads (inlined, it would have none)
    assert re.search(r"empty_strided_cpu\(\(1, 32\), \(32, 1\), torch\.float32\)", call), call
