"""Rule family `glu`: act(gate(x)) * up(x) over quantized weights becomes
torch.ops.inductor_fuse.glu_qlinear, over float weights torch.ops.inductor_fuse.glu_linear -- in
every spelling of SiLU and GELU-tanh that reaches the graph
(F.silu, nn.SiLU, x * sigmoid(x), F.gelu(approximate="tanh"), transformers' ACT2FN), float32 and
bf16, with and without the CPU dequantization rule; left alone (with its reason) for another
activation, a gate or up output with another reader, mismatched formats. Compiled the way users
compile (no Dynamo reset); each test compares against the same quantized module run eagerly."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err

import inductor_fuse
from inductor_fuse.quant import QuantConfig, quantize_
from inductor_fuse.quant.op import glu_qlinear_reference

FAMILY = "glu"
OP = torch.ops.inductor_fuse.glu_qlinear


def _act(name):
    if name == "silu":
        return F.silu
    if name == "nn.SiLU":
        return nn.SiLU()
    if name == "sigmoid":
        return lambda g: g * torch.sigmoid(g)
    if name == "gelu_tanh":
        return lambda g: F.gelu(g, approximate="tanh")
    if name == "gelu_erf":
        return F.gelu
    if name.startswith("ACT2FN:"):
        return pytest.importorskip("transformers.activations").ACT2FN[name.split(":")[1]]
    raise ValueError(name)


class MLP(nn.Module):
    """The gated MLP of Llama (SiLU) and Gemma (GELU-tanh): down(act(gate(x)) * up(x))."""

    def __init__(self, act="silu", dim=64, hidden=96, extra=None):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act, self.extra = _act(act), extra

    def forward(self, x):
        g, u = self.gate_proj(x), self.up_proj(x)
        y = self.down_proj(self.act(g) * u)
        if self.extra == "gate":  # the gate's output read elsewhere too
            y = y + g.sum(-1, keepdim=True)
        if self.extra == "up":
            y = y + u.sum(-1, keepdim=True)
        return y


def _run(model, x, options=None):
    with torch.no_grad():
        ref = model(x)
        got = torch.compile(model, backend="inductor_fuse", options=options or {})(x)
    return got, ref, inductor_fuse.last_report()


def _quantized(act, fmt="int4_g32", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = MLP(act, **kw).eval().to(dtype)
    quantize_(model, QuantConfig(fmt=fmt))
    return model


@pytest.mark.parametrize("dequant_cpu", [True, False], ids=["dequant_cpu", "reference-op"])
@pytest.mark.parametrize(
    "act, expect",
    [
        ("silu", "silu"),
        ("nn.SiLU", "silu"),
        ("sigmoid", "silu"),
        ("ACT2FN:silu", "silu"),
        ("gelu_tanh", "gelu_tanh"),
        ("ACT2FN:gelu_pytorch_tanh", "gelu_tanh"),
    ],
)
def test_fires_and_matches_eager(act, expect, dequant_cpu):
    model = _quantized(act)
    got, ref, rep = _run(model, torch.randn(2, 3, 64), {"dequant_cpu": dequant_cpu})
    assert rel_err(got, ref) < 1e-5
    assert rep.counts[FAMILY] == 1, str(rep)
    assert f"-> {expect}(gate) * up, [96] x 2 interleaved, int4_g32" in str(rep)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("fmt", ["q4_k", "q6_k"])
def test_bf16_and_gguf_formats(act, fmt):
    model = _quantized(act, fmt=fmt, dtype=torch.bfloat16, dim=256, hidden=64)
    got, ref, rep = _run(model, torch.randn(1, 2, 256, dtype=torch.bfloat16))
    assert rel_err(got, ref) < 2e-2
    assert rep.counts[FAMILY] == 1, str(rep)


def _float(act="silu", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return MLP(act, **kw).eval().to(dtype)


@pytest.mark.parametrize(
    "act, extra, reason",
    [
        ("gelu_erf", None, "neither SiLU nor GELU-tanh"),
        ("silu", "gate", "gate projection's output (or its activation) has another reader"),
        ("silu", "up", "up projection's output has another reader"),
    ],
)
@pytest.mark.parametrize("weights", ["int4", "float"])
def test_left_alone_with_a_reason(act, extra, reason, weights):
    model = _quantized(act, extra=extra) if weights == "int4" else _float(act, extra=extra)
    got, ref, rep = _run(model, torch.randn(1, 3, 64))
    assert rel_err(got, ref) < 1e-5
    assert rep.counts[FAMILY] == 0, str(rep)
    assert any(s.family == FAMILY and reason in s.reason for s in rep.skipped), str(rep)
    assert rep.counts["siblings"] == 1  # gate|up fused as siblings instead


def test_mismatched_formats():
    model, other = _quantized("silu"), _quantized("silu", fmt="int4_g64")
    model.up_proj = other.up_proj
    got, ref, rep = _run(model, torch.randn(1, 3, 64))
    assert rel_err(got, ref) < 1e-5
    assert any(s.family == FAMILY and "different formats" in s.reason for s in rep.skipped), str(rep)


class BiasMLP(MLP):
    def __init__(self, act="silu"):
        super().__init__(act)
        self.gate_proj = nn.Linear(64, 96, bias=True)
        self.up_proj = nn.Linear(64, 96, bias=True)


@pytest.mark.parametrize(
    "act, expect", [("silu", "silu"), ("sigmoid", "silu"), ("ACT2FN:gelu_pytorch_tanh", "gelu_tanh")]
)
@pytest.mark.parametrize("shape", [(2, 3, 64), (5, 64)], ids=["3d", "2d"])
def test_float_weights_fire_and_match_eager(act, expect, shape):
    model = _float(act)
    got, ref, rep = _run(model, torch.randn(*shape))
    assert rel_err(got, ref) < 1e-5  # the fp32 bound is 1e-4
    assert rep.counts[FAMILY] == 1 and rep.counts["siblings"] == 0, str(rep)
    assert f"-> {expect}(gate) * up, [96] x 2 interleaved, float32" in str(rep)


def test_float_bias_and_bf16():
    torch.manual_seed(0)
    model = BiasMLP().eval()
    got, ref, rep = _run(model, torch.randn(2, 3, 64))
    assert rel_err(got, ref) < 1e-5 and rep.counts[FAMILY] == 1, str(rep)
    model = _float("gelu_tanh", dtype=torch.bfloat16, dim=128, hidden=80)
    got, ref, rep = _run(model, torch.randn(1, 4, 128, dtype=torch.bfloat16))
    assert rel_err(got, ref) < 2e-2 and rep.counts[FAMILY] == 1, str(rep)


class ViewedMLP(MLP):
    def forward(self, x):  # x [B * T, K]: gate and up viewed to [B, T, I] before the GLU
        g = self.gate_proj(x).view(2, -1, self.gate_proj.out_features)
        u = self.up_proj(x).view(2, -1, self.up_proj.out_features)
        return self.down_proj(self.act(g) * u)


def test_float_gate_and_up_behind_a_view():
    # the GLU's output takes the gate's view: [B * T, I] -> [B, T, I], as the product had
    torch.manual_seed(0)
    got, ref, rep = _run(ViewedMLP().eval(), torch.randn(6, 64))
    assert got.shape == ref.shape == (2, 3, 64)
    assert rel_err(got, ref) < 1e-5 and rep.counts[FAMILY] == 1, str(rep)


class ActOfProduct(MLP):
    def forward(self, x):  # the activation after the product: not a GLU
        return self.down_proj(F.silu(self.gate_proj(x) * self.up_proj(x)))


class ActOfNonLinear(MLP):
    def forward(self, x):  # the activation of a product with a tensor made in forward, not of a frozen linear
        return self.down_proj(F.silu(x @ torch.ones(64, 96) / 64) * self.up_proj(x))


@pytest.mark.parametrize("cls", [ActOfProduct, ActOfNonLinear])
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int4"])
def test_act_on_the_wrong_operand_is_left_alone(cls, quantized):
    torch.manual_seed(0)
    model = cls().eval()
    if quantized:
        quantize_(model, QuantConfig(fmt="int4_g32"))
    got, ref, rep = _run(model, torch.randn(1, 3, 64))
    assert rel_err(got, ref) < 1e-5 and rep.counts[FAMILY] == 0, str(rep)


def test_float_and_quantized_halves_are_left_alone():
    model = _quantized("silu")
    model.up_proj = _float().up_proj
    got, ref, rep = _run(model, torch.randn(1, 3, 64))
    assert rel_err(got, ref) < 1e-5 and rep.counts[FAMILY] == 0, str(rep)


def test_option_turns_it_off():
    model = _quantized("silu")
    got, ref, rep = _run(model, torch.randn(1, 3, 64), {FAMILY: False})
    assert rel_err(got, ref) < 1e-5
    assert rep.counts[FAMILY] == 0 and rep.counts["siblings"] == 1


def test_op_against_float64():
    """The op's reference: the interleaved rows' float64 GLU."""
    from inductor_fuse.quant.formats import FORMATS

    g = torch.Generator().manual_seed(3)
    w = torch.randn(2 * 40, 64, generator=g)
    planes = FORMATS["int4_g32"].quantize(w)
    x, b = torch.randn(5, 64, generator=g), torch.randn(80, generator=g)
    y = x.double() @ FORMATS["int4_g32"].dequantize(planes).double().T + b.double()
    for act, f in (("silu", F.silu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"))):
        ref = f(y[:, 0::2]) * y[:, 1::2]
        assert rel_err(OP(x, planes, b, "int4_g32", act), ref) < 1e-6
        assert rel_err(glu_qlinear_reference(x, planes, b, "int4_g32", act), ref) < 1e-6
    with pytest.raises(ValueError, match="act must be one of"):
        OP(x, planes, b, "int4_g32", "relu")
