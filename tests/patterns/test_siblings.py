"""Rule family `siblings`: N linears sharing an input become one matmul + split."""

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err
from torch._inductor.utils import run_and_get_code
from toy_models import TinyLlama

import inductor_fuse

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


class Siblings(nn.Module):
    """n linears of unequal widths on one input; bias on every other one."""

    def __init__(self, k=48, widths=(40, 24, 24), bias=(True, False, True)):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(k, n, bias=b) for n, b in zip(widths, bias))

    def forward(self, x):
        outs = [lin(x) for lin in self.lins]
        return torch.cat([o.sum(-1, keepdim=True) * (i + 1) for i, o in enumerate(outs)], -1), outs[0]


def compile_and_run(model, *args, **compile_kw):
    with torch.no_grad():
        compiled = torch.compile(model, backend="inductor_fuse", **compile_kw)
        return compiled(*args), model(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48)])
def test_unequal_widths_mixed_bias(dtype, shape):
    torch.manual_seed(0)
    model = Siblings().to(dtype).eval()
    x = torch.randn(shape, dtype=dtype)
    (got, got0), (ref, ref0) = compile_and_run(model, x)
    assert rel_err(got, ref) < TOL[dtype] and rel_err(got0, ref0) < TOL[dtype]
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 1
    assert "40+24+24" in rep.rewrites[0].detail


@pytest.mark.parametrize("n", [2, 5, 8])
def test_n_way(n):
    torch.manual_seed(n)
    widths = tuple(16 + 8 * i for i in range(n))
    model = Siblings(k=32, widths=widths, bias=tuple(i % 2 == 0 for i in range(n))).eval()
    x = torch.randn(3, 32)
    (got, _), (ref, _) = compile_and_run(model, x)
    assert rel_err(got, ref) < 1e-4
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 1 and len(rep.rewrites[0].nodes) == n


def test_outputs_with_other_users():
    # Every sibling output is returned and also consumed: the splits must feed both.
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 16), nn.Linear(32, 8, bias=False)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            return a, b, a.relu().sum() + b.tanh().sum()

    torch.manual_seed(1)
    model = M().eval()
    x = torch.randn(4, 32)
    got, ref = compile_and_run(model, x)
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-5
    assert inductor_fuse.last_report().counts["siblings"] == 1


def test_no_per_call_cat_in_generated_code():
    # The weights are concatenated once at compile time: the generated code runs one addmm over
    # a single fused constant and never concatenates weights per call.
    torch.manual_seed(2)
    model = Siblings(k=64, widths=(64, 16, 16), bias=(True, True, True)).eval()
    x = torch.randn(2, 64)
    with torch.no_grad():
        _, (code,) = run_and_get_code(torch.compile(model, backend="inductor_fuse"), x)
    call = code[code.index("def call(") :]
    assert call.count("extern_kernels.addmm(") == 1, call
    assert "extern_kernels.mm(" not in call
    assert "cat" not in call.lower(), call
    assert "rand_strided((64, 96), (1, 64)" in call  # the one fused [K, 64+16+16] weight constant
    assert "rand_strided((96, ), (1, )" in call  # and its fused bias


def test_two_block_llama_counts_every_group():
    torch.manual_seed(3)
    model = TinyLlama(n_layers=2).eval()
    x = torch.randn(2, 5, 64)
    got, ref = compile_and_run(model, x, options={"glu": False})  # (with glu on, gate|up go to glu_linear)
    assert rel_err(got, ref) < 1e-4
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 4  # (q,k,v) and (gate,up) in each of 2 blocks
    labels = sorted(r.label for r in rep.rewrites)
    assert labels == ["(gate_proj,up_proj)"] * 2 + ["(q_proj,k_proj,v_proj)"] * 2
    assert "siblings x2 (q_proj,k_proj,v_proj), x2 (gate_proj,up_proj)" in rep.summary()


class HeadsMergedWithTokens(nn.Module):
    """What Qwen3.5's GatedDeltaNet does with in_proj_z: view the output as [B, S, H, D], then
    flatten tokens and heads together. On a slice of the fused output (row stride = the fused
    width) that view is impossible, so the rewrite must hand the consumer a reshape."""

    def __init__(self, k=32, heads=4, d=8, quant=None):
        super().__init__()
        self.heads, self.d = heads, d
        self.a, self.z = nn.Linear(k, 24, bias=False), nn.Linear(k, heads * d, bias=False)
        if quant is not None:
            from inductor_fuse.quant import QuantizedLinear

            self.a, self.z = QuantizedLinear.from_float(self.a, quant), QuantizedLinear.from_float(self.z, quant)

    def forward(self, x):  # x: [B, S, K]
        B, S, _ = x.shape
        z = self.z(x).reshape(B, S, -1, self.d)
        z = z.reshape(-1, self.d)  # [B*S*H, D]: merges S and H
        return self.a(x).sum(-1), z * 2


@pytest.mark.parametrize("quant", [None, "q8_0"])
def test_consumer_view_merging_tokens_and_heads(quant):
    # Regression: BackendCompilerFailed "Cannot view a tensor with shape [1, 12, 4, 32] and
    # strides (4704, 392, 32, 1) as a tensor with shape (48, 32)" on transformers' Qwen3.5.
    torch.manual_seed(7)
    model = HeadsMergedWithTokens(k=32 if quant is None else 64, quant=quant).eval()
    x = torch.randn(1, 12, 32 if quant is None else 64)
    got, ref = compile_and_run(model, x)
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-5
    assert inductor_fuse.last_report().counts["siblings"] == 1


# -- negative cases: no rewrite, correct result, a reason in the report ---------------------


def test_linears_reading_different_tensors():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 16), nn.Linear(32, 16)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model = M().eval()
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    got, ref = compile_and_run(model, x, y)
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 0
    assert len(rep.skipped) == 2 and all("no other linear reads" in s.reason for s in rep.skipped)


@pytest.mark.parametrize("pads", [([0, 0, 0, 2], [0, 0, 0, 2]), ([0, 0, 0, 2], [0, 0, 0, 6])], ids=["equal", "unequal"])
def test_linears_reading_one_padded_activation(pads):
    # On CUDA, Inductor's pad_mm pass (it runs before our rules) gives each addmm it aligns its own
    # constant_pad_nd of x: equal pads of one tensor are one activation, unequal ones are not.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from inductor_fuse import report
    from inductor_fuse.patterns.siblings import fuse_sibling_linears

    aten = torch.ops.aten
    wq, wk, bq, bk = torch.randn(64, 16), torch.randn(64, 8), torch.randn(16), torch.randn(8)

    def f(x):
        return (
            aten.addmm(bq, aten.constant_pad_nd(x, pads[0]), wq),
            aten.addmm(bk, aten.constant_pad_nd(x, pads[1]), wk),
        )

    x = torch.randn(10, 64)
    gm = make_fx(f)(x)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(mode.from_tensor(x))  # every node's val in one fake mode
    assert len(gm.graph.find_nodes(op="call_function", target=aten.constant_pad_nd.default)) == 2
    with report.collecting():
        fused = fuse_sibling_linears(gm.graph)
    assert fused == (1 if pads[0] == pads[1] else 0)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    for got, want in zip(gm(x), f(x)):
        assert got.shape == want.shape and rel_err(got, want) < 1e-6


def test_weight_that_is_a_graph_input():
    def f(x, w1, w2):
        return F.linear(x, w1) + F.linear(x, w2)

    x, w1, w2 = torch.randn(3, 32), torch.randn(16, 32), torch.randn(16, 32)
    with torch.no_grad():
        got = torch.compile(f, backend="inductor_fuse")(x, w1, w2)
    assert rel_err(got, f(x, w1, w2)) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 0
    assert rep.skipped and all(
        "is a graph input" in s.reason and "not a frozen constant" in s.reason for s in rep.skipped
    )


def test_grad_enabled_graph_passes_through():
    torch.manual_seed(4)
    model = Siblings().train()
    x = torch.randn(4, 48)
    compiled = torch.compile(model, backend="inductor_fuse")
    got, _ = compiled(x)
    ref, _ = model(x)
    assert rel_err(got, ref) < 1e-5
    got.sum().backward()  # gradients still flow
    assert model.lins[0].weight.grad is not None
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 0
    assert any("needs gradients" in n for n in rep.notes)


def test_family_switched_off():
    model = Siblings().eval()
    x = torch.randn(4, 48)
    (got, _), (ref, _) = compile_and_run(model, x, options={"siblings": False})
    assert rel_err(got, ref) < 1e-5
    assert inductor_fuse.last_report().counts["siblings"] == 0


# -- quantized siblings: planes concatenate when format and K match ------------------------


class QuantSiblings(nn.Module):
    def __init__(self, fmts, widths, k=256):
        super().__init__()
        from inductor_fuse.quant import QuantizedLinear

        self.lins = nn.ModuleList(
            QuantizedLinear.from_float(nn.Linear(k, n, bias=i == 0), fmt)
            for i, (n, fmt) in enumerate(zip(widths, fmts))
        )

    def forward(self, x):
        return torch.cat([lin(x) * (i + 1) for i, lin in enumerate(self.lins)], -1)


def test_quantized_siblings_fuse_per_format():
    torch.manual_seed(6)
    # q/k/v in q4_k with GQA widths, plus one q6_k sibling that must stay on its own
    model = QuantSiblings(["q4_k", "q4_k", "q4_k", "q6_k"], [64, 32, 32, 48]).eval()
    x = torch.randn(2, 3, 256)
    # dequant_cpu off: the quantized linears stay qlinear calls in the CPU code (act_quant off: not
    # qlinear_q8 calls sharing one quantized activation, tests/patterns/test_act_quant_rule.py)
    with torch.no_grad():
        compiled = torch.compile(model, backend="inductor_fuse", options={"dequant_cpu": False, "act_quant": False})
        got, (code,) = run_and_get_code(compiled, x)
        ref = model(x)
    assert rel_err(got, ref) < 1e-5
    rep = inductor_fuse.last_report()
    assert rep.counts["siblings"] == 1
    assert "64+32+32] q4_k" in rep.rewrites[0].detail
    assert any("no sibling with the same weight kind" in s.reason for s in rep.skipped)
    call = code[code.index("def call(") :]
    calls = re.findall(r"= torch\.ops\.inductor_fuse\.qlinear\.default\((\w+), \[([^\]]*)\]", call)
    assert len(calls) == 2, call  # the fused q4_k linear + the lone q6_k one
    for _, planes in calls:  # every plane is a constant folded at compile time, no per-call cat
        assert all(p.strip().startswith("_frozen_param") for p in planes.split(",")), planes
