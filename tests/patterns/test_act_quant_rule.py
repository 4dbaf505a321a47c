"""Rule family `act_quant`: the quantized linears that read one activation share one
torch.ops.inductor_fuse.quantize_act (the int8 activation with a scale per row per 32-wide K tile)
and become qlinear_q8 / glu_qlinear_q8, which read it instead of quantizing x in their own call.

Compiled the way users compile (no Dynamo reset), on CPU: there `dequant_cpu` turns the consumers
into float GEMMs and erases the unread quantize_act, so the compiled model must equal the one
compiled without the rule. The rewritten graph's CUDA path is checked by running the ops' CUDA
bodies on CPU tensors (Triton under TRITON_INTERPRET=1): one act_quant launch where there were two,
the same output bit for bit."""

import functools
import operator
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err
from torch._inductor.utils import run_and_get_code
from torch.fx.experimental.proxy_tensor import make_fx
from toy_models import TinyLlama

import inductor_fuse
from inductor_fuse import config, report
from inductor_fuse.kernels import dispatch, ops
from inductor_fuse.kernels._common import interpreting
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.patterns.act_quant import share_act_quant
from inductor_fuse.quant import QuantConfig, quantize_
from inductor_fuse.quant.formats import FORMATS

Q4K_MAX_M = KERNELS["q4_k"].matvec_max_m  # the largest M q4_k's matvec (the int8 activation's reader) runs
Q6K_MAX_M = KERNELS["q6_k"].matvec_max_m
# the widest matvec range of the readers in `rewritten` (q4_k, q6_k, iq4_xs): its quantize_act's max_m
READERS_MAX_M = max(KERNELS[f].matvec_max_m for f in ("q4_k", "q6_k", "iq4_xs"))

FAMILY = "act_quant"
lib = torch.ops.inductor_fuse


def _llama(n_layers=2, v_fmt="q6_k", fmt="q4_k", dtype=torch.float32):
    """q|k (and o, the MLP) in `fmt`, v in `v_fmt` (as llama.cpp's Q4_K_M mixes Q4_K and Q6_K)."""
    torch.manual_seed(0)
    model = TinyLlama(n_layers=n_layers, dim=256, hidden=512).eval().to(dtype)
    quantize_(model, QuantConfig(fmt=fmt, skip=("v_proj",)))
    quantize_(model, QuantConfig(fmt=v_fmt))
    return model


def _run(model, x, options=None, **compile_kw):
    with torch.no_grad():
        ref = model(x)
        got = torch.compile(model, backend="inductor_fuse", options=options or {}, **compile_kw)(x)
    return got, ref, inductor_fuse.last_report()


def _without_rule(model, x, options=None):
    with torch.no_grad():
        return torch.compile(model, backend="inductor_fuse", options={**(options or {}), FAMILY: False})(x)


@pytest.mark.parametrize("dequant_cpu", [True, False], ids=["dequant_cpu", "reference-op"])
def test_fires_once_per_shared_activation_and_matches_the_unfused_compile(dequant_cpu):
    model = _llama()
    x = torch.randn(1, 3, 256)
    got, ref, rep = _run(model, x, {"dequant_cpu": dequant_cpu})
    # per layer: the fused q|k (q4_k) and v (q6_k) on the attention norm, the GLU on the MLP norm;
    # both norms are fused with the quantization (TinyLlama's RMSNorm); down_proj reads the GLU's
    # output, quantized with it
    assert rep.counts[FAMILY] == 6, str(rep)
    assert rep.counts["siblings"] == 2 and rep.counts["glu"] == 2, str(rep)
    # the first norm reads the model's input; every later one a residual add, fused too
    norm, add = "RMSNorm fused", "RMSNorm fused, with the residual add before it,"
    rest = " (eps 1e-06, weight in float32): x[1, S, 256] -> int8 per 32-tile (natural order), "
    qkv, mlp = (
        rest + f"M <= {max(Q4K_MAX_M, Q6K_MAX_M)}; read by 2: q4_k, q6_k",
        rest + f"M <= {Q4K_MAX_M}; read by 1: q4_k",
    )
    # S: 3, or a symbol when earlier compiles of TinyLlama in this process saw other lengths
    # (Dynamo's automatic dynamic shapes)
    details = [
        (r.label, re.sub(r"x\[1, \w+, (256|512)\]", r"x[1, S, \1]", r.detail))
        for r in rep.rewrites
        if r.family == FAMILY
    ]
    down = (
        "the GLU's output quantized with it: x[1, S, 512] -> int8 per 32-tile (natural order), "
        f"M <= {Q4K_MAX_M}; read by 1: q4_k"
    )
    assert details == [
        ("(q_proj,v_proj)", norm + qkv),
        ("(gate_proj)", add + mlp),
        ("(down_proj)", down),
        ("(q_proj,v_proj)", add + qkv),
        ("(gate_proj)", add + mlp),
        ("(down_proj)", down),
    ], details
    # the other linear is alone on its activation (o_proj: the model's attention is not decode_attention's)
    alone = [s for s in rep.skipped if s.family == FAMILY]
    assert len(alone) == 2 and all("the only quantized linear reading" in s.reason for s in alone), str(rep)
    assert rel_err(got, ref) < 1e-5
    plain = _without_rule(model, x, {"dequant_cpu": dequant_cpu})
    if dequant_cpu:  # the norms are aten ops again: the unfused compile, bit for bit
        assert torch.equal(got, plain)
    else:  # the fused norm's CPU body is eager torch, the unfused norm Inductor's code: another rounding
        assert rel_err(got, plain) < 1e-6


def test_on_cpu_the_quantized_activation_is_erased():
    model = _llama(n_layers=1)
    x = torch.randn(1, 2, 256)
    with torch.no_grad():
        compiled = torch.compile(model, backend="inductor_fuse")
        got, (code,) = run_and_get_code(compiled, x)
        ref = model(x)
    assert inductor_fuse.last_report().counts[FAMILY] == 3  # the two norms and the GLU, fused
    call = code[code.index("def call(") :]
    # float GEMMs only (gate|up, 1 MiB: sliced_linear): no (fused) quantize_act left
    assert set(re.findall(r"torch\.ops\.inductor_fuse\.(\w+)", call)) <= {"sliced_linear"}, call
    assert rel_err(got, ref) < 1e-5


def test_without_dequant_cpu_the_code_quantizes_in_the_norms():
    model = _llama(n_layers=1)
    x = torch.randn(1, 2, 256)
    with torch.no_grad():
        compiled = torch.compile(model, backend="inductor_fuse", options={"dequant_cpu": False})
        got, (code,) = run_and_get_code(compiled, x)
        ref = model(x)
    call = code[code.index("def call(") :]
    assert "torch.ops.inductor_fuse.quantize_act.default(" not in call, call
    assert call.count("torch.ops.inductor_fuse.rmsnorm_quantize_act.default(") == 1, call  # attention
    assert call.count("torch.ops.inductor_fuse.add_rmsnorm_quantize_act.default(") == 1, call  # MLP (+ residual)
    assert call.count("torch.ops.inductor_fuse.glu_qlinear_q8_quantize_act.default(") == 1, call  # for down
    assert call.count("torch.ops.inductor_fuse.qlinear_q8.default(") == 2 + 1, call  # q|k, v; down
    assert rel_err(got, ref) < 1e-5


class SharedInput(nn.Module):
    """act(gate(x)) * up(x) (the glu family's) and a side projection of another format, on one x."""

    def __init__(self, dim=256, hidden=64):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.side = nn.Linear(dim, 32, bias=True)

    def forward(self, x):
        return F.silu(self.gate_proj(x)) * self.up_proj(x), self.side(x)


def _shared_input(fmt="q4_k", side_fmt="q8_0", dtype=torch.float32):
    torch.manual_seed(1)
    model = SharedInput().eval().to(dtype)
    quantize_(model, QuantConfig(fmt=fmt, skip=("side",)))
    quantize_(model, QuantConfig(fmt=side_fmt))
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_glu_and_a_linear_share_it(dtype):
    model = _shared_input(dtype=dtype)
    rows = 2 if dtype == torch.float32 else 1  # bf16: 1 row (more: test_bf16_rows_w4a16_sync_takes_are_left_alone)
    x = torch.randn(rows, 256, dtype=dtype)
    got, ref, rep = _run(model, x)
    assert rep.counts[FAMILY] == 1 and rep.counts["glu"] == 1, str(rep)
    (r,) = [r for r in rep.rewrites if r.family == FAMILY]
    assert r.detail.endswith("read by 2: q4_k, q8_0"), r.detail
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert all(rel_err(g, e) < tol for g, e in zip(got, ref))
    assert all(torch.equal(g, e) for g, e in zip(got, _without_rule(model, x)))


def test_layouts_are_grouped_apart():
    """int4_g* matvecs read x interleaved, the GGUF formats in natural order: two layouts, one
    consumer each, nothing shared; two int4 group sizes share one layout."""
    model = _shared_input(fmt="q4_k", side_fmt="int4_g32")
    got, ref, rep = _run(model, torch.randn(1, 256))
    assert rep.counts[FAMILY] == 0, str(rep)
    assert sum("the only quantized linear reading" in s.reason for s in rep.skipped if s.family == FAMILY) == 2
    model = _shared_input(fmt="int4_g64", side_fmt="int4_g32")
    got, ref, rep = _run(model, torch.randn(1, 256))
    assert rep.counts[FAMILY] == 1, str(rep)
    assert "(interleaved), M <= 8; read by 2: int4_g64, int4_g32" in str(rep)
    assert all(rel_err(g, e) < 1e-5 for g, e in zip(got, ref))


def test_a_format_without_a_matvec_is_left_alone(monkeypatch):
    monkeypatch.delitem(KERNELS, "q6_k")  # as if q6_k had no Triton kernels
    model = _llama(n_layers=1)
    x = torch.randn(1, 3, 256)
    got, ref, rep = _run(model, x)
    # nothing shared with v_proj: q|k and the GLU alone on their norms, each fused into it; down
    # on the GLU's output
    assert rep.counts[FAMILY] == 3, str(rep)
    assert all(r.detail.endswith("read by 1: q4_k") for r in rep.rewrites if r.family == FAMILY), str(rep)
    reasons = [s.reason for s in rep.skipped if s.family == FAMILY]
    assert any("format q6_k has no int8 x int4 matvec" in r for r in reasons), reasons
    assert rel_err(got, ref) < 1e-5


def test_option_turns_it_off():
    model = _llama(n_layers=1)
    got, ref, rep = _run(model, torch.randn(1, 3, 256), {FAMILY: False})
    assert rep.counts[FAMILY] == 0 and not [s for s in rep.skipped if s.family == FAMILY]
    assert rel_err(got, ref) < 1e-5


def test_bf16_rows_w4a16_sync_takes_are_left_alone():
    """bf16 x of a static M that w4a16_sync takes (Q4_K and Q6_K: 3..16): it reads x in float
    (kernels/dispatch.kernel_for), so nothing is quantized for it; with small_m "off" Q6_K's matvec
    (M <= 6) is a reader again."""
    model = _llama(n_layers=1, dtype=torch.bfloat16)
    x = torch.randn(1, 6, 256, dtype=torch.bfloat16)
    got, ref, rep = _run(model, x, dynamic=False)
    assert rep.counts[FAMILY] == 0, str(rep)
    reasons = [s.reason for s in rep.skipped if s.family == FAMILY]
    for fmt in ("q4_k", "q6_k"):
        assert f"M = 6 rows of torch.bfloat16: {fmt}'s w4a16_sync runs, reading x in float" in reasons, reasons
    assert rel_err(got.float(), ref.float()) < 3e-2
    with config.patch(small_m="off"):  # w4a16_mma for Q4_K, the matvec for Q6_K (alone on its input)
        _, _, rep = _run(_llama(n_layers=1, dtype=torch.bfloat16), x, dynamic=False)
    reasons = [s.reason for s in rep.skipped if s.family == FAMILY]
    assert "M = 6 rows: q4_k's GEMM runs (its matvec takes M <= 4), reading x in float" in reasons, reasons
    assert not any("w4a16_sync" in r for r in reasons) and any("the only quantized linear" in r for r in reasons)


def test_more_rows_than_any_matvec_takes_is_left_alone():
    """A static M above the formats' matvec range: every consumer runs its GEMM on float x."""
    model = _llama(n_layers=1)
    got, ref, rep = _run(model, torch.randn(1, 17, 256), dynamic=False)  # 17 > q6_k's 6 > q4_k's 4
    assert rep.counts[FAMILY] == 0, str(rep)
    assert any("M = 17 rows: q6_k's GEMM runs" in s.reason for s in rep.skipped if s.family == FAMILY), str(rep)
    assert rel_err(got, ref) < 1e-5


def test_symbolic_rows_fire():
    """A symbolic M may be a decode step: shared; the CUDA quantize_act skips the work past max_m."""
    model = _llama(n_layers=1)
    got, ref, rep = _run(model, torch.randn(1, 5, 256), dynamic=True)
    assert rep.counts[FAMILY] == 1, str(rep)
    # dynamic=True makes the norms' eps a graph input: not fused (the op takes a constant eps)
    assert any("RMSNorm not fused: eps is not a constant" in s.reason for s in rep.skipped), str(rep)
    assert rel_err(got, ref) < 1e-5


# -- the rewritten graph on the CUDA bodies ---------------------------------------------------------

CUDA_BODIES = {
    lib.qlinear.default: ops._qlinear_cuda,
    lib.glu_qlinear.default: ops._glu_qlinear_cuda,
    lib.qlinear_q8.default: ops._qlinear_q8_cuda,
    lib.glu_qlinear_q8.default: ops._glu_qlinear_q8_cuda,
    lib.quantize_act.default: ops._quantize_act_cuda,
}


@pytest.fixture(scope="module")
def rewritten():
    """f: four quantized linears of three formats on one x, traced with a symbolic M (as a decode
    graph compiled for any M), act_quant applied, each op's CUDA body in place of the op."""
    fmts = {"qk": "q4_k", "v": "q6_k", "gu": "q4_k", "side": "iq4_xs"}
    g = torch.Generator().manual_seed(0)
    w = {k: list(FORMATS[f].quantize(torch.randn(64, 256, generator=g))) for k, f in fmts.items()}

    def f(x, qk, v, gu, side):
        return (
            lib.qlinear(x, qk, None, "q4_k"),
            lib.qlinear(x, v, None, "q6_k"),
            lib.glu_qlinear(x, gu, None, "q4_k", "silu"),
            lib.qlinear(x, side, None, "iq4_xs"),
        )

    gm = make_fx(f, tracing_mode="symbolic")(torch.randn(4, 256), *(w[k] for k in fmts))
    assert share_act_quant(gm.graph) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert targets.count(lib.quantize_act.default) == 1 and targets.count(lib.qlinear_q8.default) == 3
    assert targets.count(lib.glu_qlinear_q8.default) == 1
    (qa,) = gm.graph.find_nodes(op="call_function", target=lib.quantize_act.default)
    assert qa.args[1:] == (False, READERS_MAX_M)  # natural order, up to the widest matvec range of its readers
    for node in gm.graph.nodes:  # run each op's CUDA body instead (on the CPU tensors)
        if node.op == "call_function" and node.target in CUDA_BODIES:
            node.target = CUDA_BODIES[node.target]
    gm.recompile()
    return gm, fmts, w


@pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("M", [1, 3, 5, 12, 20])  # 5: q6_k's and iq4_xs's matvecs, q4_k's int8_mma; 12, 20: GEMMs only
def test_the_rewritten_graph_on_the_cuda_bodies(M, rewritten, act_quant_calls):
    gm, fmts, w = rewritten
    x = torch.randn(M, 256, generator=torch.Generator().manual_seed(M))
    args = (x, *(w[k] for k in fmts))
    launches = act_quant_calls
    got = gm(*args)
    shared = launches[:]
    launches.clear()
    want = [CUDA_BODIES[lib.qlinear.default](x, w[k], None, fmts[k]) for k in ("qk", "v")]
    want.append(CUDA_BODIES[lib.glu_qlinear.default](x, w["gu"], None, "q4_k", "silu"))
    want.append(CUDA_BODIES[lib.qlinear.default](x, w["side"], None, "iq4_xs"))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    matvecs = sum(M <= KERNELS[fmt].matvec_max_m for fmt in ("q4_k", "q6_k", "q4_k", "iq4_xs"))
    assert len(launches) == matvecs  # unshared: one act_quant per matvec
    assert len(shared) == (1 if M <= READERS_MAX_M else 0)  # shared: one for all, none when no matvec reads it


# -- the producer fused: RMSNorm + quantization as one rmsnorm_quantize_act ------------------------

FUSED = "RMSNorm fused"
ATTENTION = "decode attention's output quantized in its merge step: "


def _fused_rewrites(rep):
    return [r for r in rep.rewrites if r.family == FAMILY and r.detail.startswith(FUSED)]


def _attention_rewrites(rep):
    return [r for r in rep.rewrites if r.family == FAMILY and r.detail.startswith(ATTENTION)]


def _transformer(dtype=torch.float32):
    """The project's Transformer (llama flavour, 2 layers), q4_k weights: per layer the attention
    norm feeds q|k|v (siblings) and the MLP norm gate|up (glu), the final norm lm_head."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from test_transformer import FAMILIES, build

    args = dataclasses.replace(FAMILIES["llama"], dim=256, intermediate_size=512, head_dim=64)
    model = build(args, max_seq_len=16).to(dtype)
    quantize_(model, QuantConfig(fmt="q4_k"))
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_transformers_norms_are_fused(dtype):
    model = _transformer(dtype)
    S = 2 if dtype == torch.float32 else 1  # bf16: 1 token (more: test_bf16_rows_w4a16_sync_takes_are_left_alone)
    tokens, pos = torch.tensor([[1, 2][:S]]), torch.arange(S)
    with torch.no_grad():
        ref = model(tokens, pos)
        # static shapes: an earlier compile of Transformer.forward in this process at another
        # length (test order under pytest-xdist) would make Dynamo's automatic dynamic trace a
        # symbolic length here, a prefill-like graph that decode_attention leaves alone
        got = torch.compile(model, backend="inductor_fuse", dynamic=False)(tokens, pos)
        rep = inductor_fuse.last_report()
        plain = torch.compile(model, backend="inductor_fuse", dynamic=False, options={FAMILY: False})(tokens, pos)
    fused, attention = _fused_rewrites(rep), _attention_rewrites(rep)
    assert len(fused) == 5, str(rep)  # 2 layers x (attention, MLP) + the final norm
    glus = [r for r in rep.rewrites if r.family == FAMILY and r.detail.startswith("the GLU's output")]
    assert [r.label for r in glus] == ["(down_proj)"] * 2, str(rep)
    assert rep.counts[FAMILY] == len(fused) + len(attention) + len(glus) == 9, str(rep)  # + o_proj, down_proj
    assert [r.label for r in attention] == ["(o_proj)"] * 2, str(rep)
    assert sorted(r.label for r in fused) == ["(gate_proj)"] * 2 + ["(output)"] + ["(q_proj)"] * 2, str(rep)
    want = f" (eps 1e-05, weight in float32): x[1, {S}, 256] -> int8 per 32-tile (natural order), M <= {Q4K_MAX_M}"
    assert all(want in r.detail for r in fused), [r.detail for r in fused]
    added = [r.label for r in fused if r.detail.startswith("RMSNorm fused, with the residual add before it")]
    assert len(added) == 4, [r.detail for r in fused]  # every norm but the first (the embedding's output)
    assert rel_err(got.float(), ref.float()) < (1e-5 if dtype == torch.float32 else 3e-2)
    assert torch.equal(got, plain)  # on CPU dequant_cpu puts the norm back: the unfused compile


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_transformers_models_int4(family):
    """transformers' LlamaRMSNorm (weight after the cast) and Gemma3RMSNorm (1 + w in float32) on
    int4 weights (the int4_g32 matvec reads x interleaved)."""
    from hf_models import FAMILIES, FamilyUnavailable, input_ids
    from hf_models import build as build_hf

    fam = next(f for f in FAMILIES if f.name == family)
    try:
        model = build_hf(fam)
    except FamilyUnavailable as e:  # transformers without this family
        pytest.skip(f"{family}: {e}")
    quantize_(model, QuantConfig(fmt="int4_g32"))
    ids = input_ids(seq=3)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        got = torch.compile(model, backend="inductor_fuse")(ids, use_cache=False).logits
        rep = inductor_fuse.last_report()
        plain = torch.compile(model, backend="inductor_fuse", options={FAMILY: False})(ids, use_cache=False).logits
    fused, attention = _fused_rewrites(rep), _attention_rewrites(rep)
    glus = [r for r in rep.rewrites if r.family == FAMILY and r.detail.startswith("the GLU's output")]
    assert len(fused) == 5 and len(attention) == 2 and len(glus) == 2, str(rep)  # the norms; o_proj; down_proj
    assert rep.counts[FAMILY] == len(fused) + len(attention) + len(glus), str(rep)
    offset = ", w + 1" if family == "gemma3" else ""
    assert all(f"{offset}, weight in float32): " in r.detail and "(interleaved), M <= 8" in r.detail for r in fused)
    assert rel_err(got, ref) < 1e-4
    assert torch.equal(got, plain)


@pytest.mark.parametrize("dequant_cpu", [True, False], ids=["dequant_cpu", "reference-op"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_attention_output_is_quantized_where_it_is_merged(family, dequant_cpu):
    """A decode step of the project's Transformer (llama: GQA 2, head dim 64; gemma3: head dim 256,
    sliding-window layers): each layer's o-projection reads the int8 activation that
    decode_attention_quantize_act makes, no act_quant of its own. On CPU dequant_cpu turns it back
    into decode_attention (the graph of the compile without the rule); without dequant_cpu the
    op's reference body runs."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from test_transformer import FAMILIES, build

    args = dataclasses.replace(FAMILIES[family], dim=256, intermediate_size=512, n_heads=4, head_dim=64)
    if family == "gemma3":  # two layers: one sliding-window, one global
        args = dataclasses.replace(args, head_dim=256, n_layers=2, sliding_window_pattern=2)
        assert [args.is_sliding(i) for i in range(2)] == [True, False]
    models = []
    for _ in range(3):
        m = build(args, max_seq_len=48)
        quantize_(m, QuantConfig(fmt="q4_k"))
        models.append(m)
    tokens = torch.randint(0, args.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5))
    options = {"dequant_cpu": dequant_cpu}
    with torch.no_grad():
        outs = []
        for model, opts in zip(models, (None, options, {**options, FAMILY: False})):
            model(tokens[:, :6], torch.arange(6))
            step = model if opts is None else torch.compile(model, backend="inductor_fuse", options=opts)
            outs.append(torch.cat([step(tokens[:, i : i + 1], torch.tensor([i])) for i in range(6, 9)], 1))
            if opts is options:
                rep = inductor_fuse.last_report()
    ref, got, plain = outs
    rewrites = _attention_rewrites(rep)
    assert [r.label for r in rewrites] == ["(o_proj)"] * args.n_layers, str(rep)
    assert all("x[1, 1, " in r.detail and "read by 1: q4_k" in r.detail for r in rewrites), str(rep)
    assert rep.counts["decode_attention"] == args.n_layers, str(rep)
    assert rel_err(got, ref) < 1e-5
    if dequant_cpu:
        assert torch.equal(got, plain)


def test_an_attention_output_read_in_another_layout_is_left_alone():
    # o-projection reading the attention output [B, Hq, S, D] without the transpose (another
    # layout than the one the kernel quantizes): no rewrite
    from inductor_fuse.patterns.act_quant import match_attention

    q, k, v = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 32, 64), torch.randn(1, 2, 32, 64)
    mask = torch.ones(1, 1, 1, 32, dtype=torch.bool)

    def f(q, k, v, mask, transpose):
        a = lib.decode_attention(q, k, v, mask, 0.125, 0.0)
        return (a.transpose(1, 2) if transpose else a).reshape(1, 1, 256)

    for transpose, fires in ((True, True), (False, False)):
        gm = _trace(functools.partial(f, transpose=transpose), q, k, v, mask, mode="fake")
        (out,) = [n for n in gm.graph.nodes if n.op == "output"][0].args[0:1]
        x = out[0] if isinstance(out, (tuple, list)) else out
        assert (match_attention(x) is not None) == fires, gm.graph


def _rms(h, w, cast_first=True, offset=0.0, dim=-1):
    h32 = h.float()
    n = h32 * torch.rsqrt(h32.pow(2).mean(dim, keepdim=True) + 1e-6)
    return w * n.to(h.dtype) if cast_first else (n * (w.float() + offset)).to(h.dtype)


def _trace(f, *args, mode="symbolic"):
    """f's aten graph with Inductor's decompositions (``.float()`` as prims.convert_element_type,
    as in the post-grad graph)."""
    from torch._inductor.decomposition import select_decomp_table

    return make_fx(f, tracing_mode=mode, decomposition_table=select_decomp_table())(*args)


def _calls(gm, target):
    return gm.graph.find_nodes(op="call_function", target=target)


NORM_CUDA_BODIES = {
    **CUDA_BODIES,
    lib.rmsnorm_quantize_act.default: ops._rmsnorm_quantize_act_cuda,
    lib.add_rmsnorm_quantize_act.default: ops._add_rmsnorm_quantize_act_cuda,
}


def _on_cuda_bodies(*gms):
    """Each graph's inductor_fuse ops swapped for their CUDA bodies (Triton under the interpreter)."""
    for m in gms:
        for node in m.graph.nodes:
            if node.op == "call_function" and node.target in NORM_CUDA_BODIES:
                node.target = NORM_CUDA_BODIES[node.target]
        m.recompile()


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def rewritten_norm(request):
    """A Gemma-style norm of h [1, M, 256] read by a q4_k linear and a GLU through a reshape
    [M, 256], and returned (another reader of y); traced with a symbolic M, act_quant applied."""
    dtype = request.param
    g = torch.Generator().manual_seed(0)
    w = {k: list(FORMATS["q4_k"].quantize(torch.randn(64, 256, generator=g))) for k in ("qkv", "gu")}
    norm_w = (torch.randn(256, generator=g) * 0.2).to(dtype)

    def f(h, nw, qkv, gu):
        y = _rms(h, nw, cast_first=False, offset=1.0)
        x = y.reshape(-1, 256)
        return y, lib.qlinear(x, qkv, None, "q4_k"), lib.glu_qlinear(x, gu, None, "q4_k", "silu")

    h = torch.randn(1, 4, 256, dtype=dtype)
    gm = _trace(f, h, norm_w, w["qkv"], w["gu"])
    plain = _trace(f, h, norm_w, w["qkv"], w["gu"])
    assert share_act_quant(gm.graph) == 1
    (fused,) = _calls(gm, lib.rmsnorm_quantize_act.default)
    assert fused.args[2:] == (1e-6, 1.0, False, False, Q4K_MAX_M)
    assert not _calls(gm, aten_rsqrt) and not _calls(gm, lib.quantize_act.default)
    _on_cuda_bodies(gm, plain)
    return gm, plain, dtype, norm_w, w


aten_rsqrt = torch.ops.aten.rsqrt.default


@pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("M", [1, 3, 12])  # 12: past q4_k's matvec (4): the GEMMs read y, nothing quantized
def test_the_fused_norm_on_the_cuda_bodies(M, rewritten_norm, act_quant_calls, monkeypatch):
    from inductor_fuse.kernels import norm_quant

    gm, plain, dtype, norm_w, w = rewritten_norm
    h = torch.randn(1, M, 256, generator=torch.Generator().manual_seed(M)).to(dtype)
    launches, fused = act_quant_calls, []
    real_norm = norm_quant.rmsnorm_quantize

    def norm_spy(*args, **kwargs):
        fused.append(args[6])  # quant
        return real_norm(*args, **kwargs)

    monkeypatch.setattr(norm_quant, "rmsnorm_quantize", norm_spy)
    got = gm(h, norm_w, w["qkv"], w["gu"])
    assert fused == [M <= Q4K_MAX_M] and launches == []  # one launch: the norm quantizes; the matvecs read it
    want = plain(h, norm_w, w["qkv"], w["gu"])
    matvec = dispatch.kernel_for("q4_k", M, 64, 256, dtype) == "matvec"  # bf16 M = 3: w4a16_sync, x in float
    assert launches == ([(M, 256)] * 2 if matvec else [])  # unfused: one act_quant per matvec
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel_err(a.float(), b.float()) < tol


@pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_residual_add_goes_into_the_fused_norm(dtype):
    """h = a + b read by the norm and by the residual stream: one add_rmsnorm_quantize_act, whose s
    the stream reads; on the CUDA bodies the same results as the unfused graph's."""
    g = torch.Generator().manual_seed(1)
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256, generator=g)))
    norm_w = (torch.randn(256, generator=g) * 0.2).to(dtype)

    def f(a, b, nw, p):
        h = a + b
        y = _rms(h, nw, cast_first=False, offset=1.0)
        return h * 2.0, lib.qlinear(y, p, None, "q4_k")

    S = 3 if dtype == torch.float32 else 1  # bf16: 1 row (more: test_bf16_rows_w4a16_sync_takes_are_left_alone)
    a, b = (torch.randn(1, S, 256, generator=g).to(dtype) for _ in range(2))
    gm, plain = (_trace(f, a, b, norm_w, planes, mode="fake") for _ in range(2))
    with report.discarding() as rep:
        assert share_act_quant(gm.graph) == 1, str(rep)
    (fused,) = _calls(gm, lib.add_rmsnorm_quantize_act.default)
    assert "RMSNorm fused, with the residual add before it" in rep.rewrites[0].detail
    assert fused.args[:2] == tuple(n for n in gm.graph.nodes if n.op == "placeholder")[:2]  # (a, b)
    assert not _calls(gm, torch.ops.aten.add.Tensor)  # the residual add, the norm's eps and 1 + w: all inside
    _on_cuda_bodies(gm, plain)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for got, want in zip(gm(a, b, norm_w, planes), plain(a, b, norm_w, planes)):
        assert got.shape == want.shape and rel_err(got.float(), want.float()) < tol


def _sandwich(dtype, post_norm_read_elsewhere=False):
    """Gemma 3's residual step: h = a + post_norm(o); the next pre-norm of h read by a q4_k linear;
    h is the residual stream (returned)."""
    g = torch.Generator().manual_seed(3)
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256, generator=g)))
    w_post, w_pre = ((torch.randn(256, generator=g) * 0.2).to(dtype) for _ in range(2))

    def f(a, o, wp, wn, p):
        n = _rms(o, wp, cast_first=False, offset=1.0)
        h = a + n
        y = _rms(h, wn, cast_first=False, offset=1.0)
        out = (h * 2.0, lib.qlinear(y, p, None, "q4_k"))
        return (*out, n + 1.0) if post_norm_read_elsewhere else out

    S = 3 if dtype == torch.float32 else 1  # bf16: 1 row (more: test_bf16_rows_w4a16_sync_takes_are_left_alone)
    a, o = torch.randn(1, S, 256, generator=g).to(dtype), (torch.randn(1, S, 256, generator=g) * 30).to(dtype)
    args = (a, o, w_post, w_pre, planes)
    return (_trace(f, *args, mode="fake") for _ in range(2)), args


@pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_sandwich_norm_before_the_add_goes_in_too(dtype):
    """h = a + post_norm(o), then the norm of h: one add_rmsnorm_quantize_act that normalizes o
    too (no norm left to Inductor: no rsqrt, no add in the graph); on the CUDA bodies the same
    results as the unfused graph's."""
    (gm, plain), args = _sandwich(dtype)
    with report.discarding() as rep:
        assert share_act_quant(gm.graph) == 1, str(rep)
    (fused,) = _calls(gm, lib.add_rmsnorm_quantize_act.default)
    assert "with the residual add and its addend's RMSNorm" in rep.rewrites[0].detail
    a, o, w_post = [n for n in gm.graph.nodes if n.op == "placeholder"][:3]
    assert fused.args[:2] == (a, o) and fused.args[8:] == (w_post, 1e-6, 1.0, False)
    assert not _calls(gm, aten_rsqrt) and not _calls(gm, torch.ops.aten.add.Tensor)
    _on_cuda_bodies(gm, plain)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for got, want in zip(gm(*args), plain(*args)):
        assert got.shape == want.shape and rel_err(got.float(), want.float()) < tol


def test_a_post_norm_read_elsewhere_stays_out_of_the_fused_norm():
    (gm, _), _ = _sandwich(torch.float32, post_norm_read_elsewhere=True)
    with report.discarding() as rep:
        assert share_act_quant(gm.graph) == 1, str(rep)
    (fused,) = _calls(gm, lib.add_rmsnorm_quantize_act.default)
    assert len(fused.args) == 8 and len(_calls(gm, aten_rsqrt)) == 1  # the post-norm stays, outside
    assert "with the residual add before it" in rep.rewrites[0].detail


def test_a_broadcast_add_stays_out_of_the_fused_norm():
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256, generator=torch.Generator().manual_seed(2))))

    def f(a, bias, nw, p):
        y = _rms(a + bias, nw, cast_first=False)  # [1, 3, 256] + [256]: not a residual add
        return lib.qlinear(y, p, None, "q4_k")

    gm = _trace(f, torch.randn(1, 3, 256), torch.randn(256), torch.randn(256), planes, mode="fake")
    with report.discarding() as rep:
        assert share_act_quant(gm.graph) == 1, str(rep)
    assert _calls(gm, lib.rmsnorm_quantize_act.default) and not _calls(gm, lib.add_rmsnorm_quantize_act.default)


def _one_linear(norm):
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256, generator=torch.Generator().manual_seed(5))))

    def f(h, nw, p):
        y = norm(h, nw)
        return lib.qlinear(y, p, None, "q4_k")

    return _trace(f, torch.randn(3, 256), torch.randn(256), planes, mode="real")


def _not_fused(gm):
    before = [n.target for n in gm.graph.nodes]
    assert share_act_quant(gm.graph) == 0
    assert [n.target for n in gm.graph.nodes] == before


def test_a_norm_over_another_dim_is_not_fused():
    with report.discarding() as rep:
        _not_fused(_one_linear(lambda h, w: _rms(h, w, dim=0)))
    assert any("RMSNorm not fused: the mean is over dims [0]" in s.reason for s in rep.skipped), str(rep)


def test_a_mean_not_over_the_full_last_dim_is_not_fused():
    with report.discarding() as rep:  # a norm per 32 of the K = 256 the linear reads: no RMSNorm of x
        _not_fused(_one_linear(lambda h, w: _rms(h.reshape(3, 8, 32), w[:32]).reshape(3, 256)))
    (skip,) = [s for s in rep.skipped if s.family == FAMILY]
    assert skip.reason.endswith("its own act_quant is the same one launch"), skip.reason
    with report.discarding() as rep:
        _not_fused(_one_linear(lambda h, w: _rms(h, w, dim=[-2, -1])))
    assert any("RMSNorm not fused: the mean is over dims [-2, -1]" in s.reason for s in rep.skipped), str(rep)


def _calls_in_report(rep):
    return [r for r in rep.rewrites if r.family == FAMILY]


def test_a_norm_whose_inside_is_read_elsewhere_is_not_fused():
    """rsqrt is also an output: removing the norm would remove it."""
    planes = list(FORMATS["q4_k"].quantize(torch.randn(64, 256)))

    def f(h, nw, p):
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return lib.qlinear(h * r * nw, p, None, "q4_k"), r

    gm = _trace(f, torch.randn(3, 256), torch.randn(256), planes, mode="real")
    with report.discarding() as rep:
        _not_fused(gm)
    assert any("(inside the norm) is also read by output" in s.reason for s in rep.skipped), str(rep)


def test_a_float_linear_after_the_norm_is_left_alone():
    args = torch.randn(3, 256), torch.randn(256), torch.randn(64, 256)
    gm = _trace(lambda h, nw, W: F.linear(_rms(h, nw), W), *args, mode="real")
    with report.discarding() as rep:
        _not_fused(gm)
    assert not _calls_in_report(rep) and not rep.skipped
