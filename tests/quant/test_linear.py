"""QuantizedLinear (through torch.ops.inductor_fuse.qlinear), quantize_ and QuantConfig."""

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inductor_fuse.quant import FORMATS, QuantConfig, QuantizedLinear, quantize_


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("bias", [False, True])
def test_forward_is_dequantize_then_linear(name, bias):
    torch.manual_seed(0)
    lin = nn.Linear(256, 37, bias=bias)
    q = QuantizedLinear.from_float(lin, name)
    assert [p.dtype for p in q.planes] == [s.dtype for s in FORMATS[name].plane_specs]
    x = torch.randn(3, 5, 256)
    w = FORMATS[name].dequantize(q.planes)
    torch.testing.assert_close(q(x), F.linear(x, w, lin.bias), rtol=0, atol=0)
    # the quantized output is close to the float one
    ref = lin(x)
    rel = ((q(x) - ref).norm() / ref.norm()).item()
    assert rel < 0.12, rel


def test_bf16_input_and_module_to_dtype():
    torch.manual_seed(0)
    q = QuantizedLinear.from_float(nn.Linear(256, 64), "q4_k")
    dtypes = [p.dtype for p in q.planes]
    q = q.to(torch.bfloat16)  # fp16 scale planes keep their dtype; the bias follows
    assert [p.dtype for p in q.planes] == dtypes
    assert q.bias.dtype == torch.bfloat16
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 64)
    want = F.linear(x.float(), q.quantized_weight.dequantize().float(), q.bias.float())
    assert ((y.float() - want).norm() / want.norm()).item() < 1e-2  # bf16 rounding only
    assert list(dict(q.named_buffers())) == ["plane0", "plane1", "plane2", "bias"]


def test_state_dict_round_trip():
    torch.manual_seed(0)
    q = QuantizedLinear.from_float(nn.Linear(512, 48, bias=True), "q6_k")
    empty = QuantizedLinear(512, 48, "q6_k", bias=torch.zeros(48))
    empty.load_state_dict(q.state_dict())
    x = torch.randn(4, 512)
    assert torch.equal(empty(x), q(x))
    assert sorted(q.state_dict()) == ["bias", "plane0", "plane1", "plane2", "plane3"]


def test_planes_must_match_features():
    planes = FORMATS["q8_0"].quantize(torch.randn(8, 64))
    with pytest.raises(
        ValueError, match=r"q8_0: planes hold a weight \[8, 64\], expected \[out_features=8, in_features=32\]"
    ):
        QuantizedLinear(32, 8, "q8_0", planes)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(256, 256, bias=False)
        self.odd = nn.Linear(100, 256)  # in_features not a multiple of any block
        self.mlp = nn.Sequential(nn.Linear(256, 512), nn.SiLU(), nn.Linear(512, 256))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(256, 1000, bias=False)


def test_quantize_swaps_linears(caplog):
    model = Model()
    with caplog.at_level(logging.WARNING):
        quantize_(model, QuantConfig(fmt="q4_k", skip=("lm_head",)))
    for block in model.layers:
        assert isinstance(block.q_proj, QuantizedLinear) and block.q_proj.fmt == "q4_k"
        assert isinstance(block.mlp[0], QuantizedLinear) and isinstance(block.mlp[2], QuantizedLinear)
        assert block.mlp[0].bias is not None and block.q_proj.bias is None
        assert type(block.odd) is nn.Linear
    assert type(model.lm_head) is nn.Linear
    assert "layers.0.odd left in float: in_features=100 is not a multiple of the q4_k block (256)" in caplog.text


def test_quantize_int4():
    import copy

    torch.manual_seed(0)
    model = Model()
    float_mlp = copy.deepcopy(model.layers[0].mlp)
    quantize_(model, QuantConfig(fmt="int4_g32"))
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.fmt == "int4_g32"
    x = torch.randn(2, 256)
    got, want = model.layers[0].mlp(x), float_mlp(x)
    assert got.shape == (2, 256)
    assert ((got - want).norm() / want.norm()).item() < 0.15  # int4 g32's error, not garbage


def test_config_validation():
    with pytest.raises(ValueError, match=r"QuantConfig: unknown fmt 'q3_k'; valid formats: \['int4_g128', 'int4_g32'"):
        QuantConfig(fmt="q3_k")
    with pytest.raises(ValueError, match="QuantConfig: skip must be a tuple of module names"):
        QuantConfig(skip="lm_head")
    assert QuantConfig(skip=["lm_head"]).skip == ("lm_head",)
    with pytest.raises(AttributeError):
        QuantConfig().fmt = "q6_k"  # frozen


def test_from_weight_and_quantized_weight():
    torch.manual_seed(0)
    q = QuantizedLinear.from_float(nn.Linear(64, 8, bias=False), "q8_0")
    qw = q.quantized_weight
    assert qw.shape == (8, 64) and qw.fmt == "q8_0"
    q2 = QuantizedLinear.from_weight(qw)
    x = torch.randn(2, 64)
    assert torch.equal(q2(x), q(x))


def test_traces_in_one_graph():
    # forward is one qlinear call per module: dynamo traces it without graph breaks
    torch.manual_seed(0)
    model = quantize_(nn.Sequential(nn.Linear(256, 512), nn.SiLU(), nn.Linear(512, 256)), QuantConfig("q4_k"))
    x = torch.randn(3, 256)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), model(x))
