"""Sweep: the backend on tiny random decoder-only LMs of the installed `transformers`.

Each family of tests/hf_models.FAMILIES is built from a config alone (no hub), compiled as users
do, `torch.compile(model, backend="inductor_fuse")`, and run once on input_ids [1, 8]
(use_cache=False). Its logits must match eager, and the `siblings` rule must fire at least as
often as the family's table entry says. What fired is printed (`pytest -s`):

    llama {'siblings': 4}

No `torch._dynamo.reset()` between families: a process that compiles one model after another is
what a user has. Each compile passes ``dynamic=False``: other tests of the same worker run some of
these forwards (Qwen3.5's in tests/test_qwen3_5.py) at other lengths, and Dynamo's automatic dynamic
would then compile this one with a symbolic length: its time and its rule counts would depend on
which tests ran before (Qwen3.5 with a symbolic length on the CPU, torch 2.11: 375 s of compile
against 50 s static, stock Inductor's 356 s against 63; docs/robustness.md). Symbolic lengths are
tested in tests/test_recompiles_and_caches.py.
A family this transformers cannot build is skipped with the reason; the list stays explicit.

GPU variants (`-m gpu`, INDUCTOR_FUSE_GPU_TESTS=1): bfloat16, and Q4_K weights via
`quantize_` (hidden 256: Q4_K needs K % 256 == 0; linears that do not fit stay float).
"""

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

pytest.importorskip("transformers")  # a test dependency (".[test]"); a machine without it skips the sweep

from hf_models import FAMILIES, Family, FamilyUnavailable, build, input_ids
from numerics import rel_err

import inductor_fuse
from inductor_fuse.backend import GROUPED_MM_CUDA

FP32_TOL = 1e-4
BF16_TOL = 3e-2


class Run(NamedTuple):
    want: torch.Tensor  # eager logits
    got: torch.Tensor  # compiled logits
    reports: list  # the reports of this compile (a graph break gives several Dynamo graphs)
    again: Callable[[], str]  # on a mismatch: which side moves when both run again


def compile_and_run(family: Family, model: torch.nn.Module, ids: torch.Tensor) -> Run:
    n_before = len(inductor_fuse.all_reports())
    compiled = torch.compile(model, backend="inductor_fuse", dynamic=False)  # (module docstring)
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        got = compiled(ids, use_cache=False).logits
    reports = inductor_fuse.all_reports()[n_before:]
    print(family.name, inductor_fuse.total_counts(reports), f"({len(reports)} graph(s))")

    def again() -> str:
        with torch.no_grad():
            want2 = model(ids, use_cache=False).logits
            got2 = compiled(ids, use_cache=False).logits
            with sdpa_kernel(SDPBackend.MATH):
                math = model(ids, use_cache=False).logits
        errs = {
            "eager run again vs eager": rel_err(want2.float(), want.float()),
            "compiled run again vs compiled": rel_err(got2.float(), got.float()),
            "eager with math SDPA vs eager": rel_err(math.float(), want.float()),
            "compiled vs eager with math SDPA": rel_err(got.float(), math.float()),
        }
        return "; ".join(f"{k} {v:.3e}" for k, v in errs.items())

    return Run(want, got, reports, again)


def check(family: Family, run: Run, tol: float) -> None:
    want, got, reports = run.want, run.got, run.reports
    counts = inductor_fuse.total_counts(reports)
    text = "\n".join(str(rep) for rep in reports) or "(no inductor_fuse compilation)"
    assert reports, f"{family.name}: inductor_fuse compiled nothing (the logits compared would be eager's)"
    assert got.shape == want.shape
    assert not any(rep.failures for rep in reports), f"{family.name}: a rule or the compile with rules failed\n{text}"
    err = rel_err(got.float(), want.float())
    assert err < tol, f"{family.name}: logits rel err {err:.3e} >= {tol:g} ({run.again()})\n{text}"
    # on quantized weights the glu rule takes gate|up before siblings would: either fuses the pair
    fused = counts["siblings"] + counts.get("glu", 0)
    assert fused >= family.min_siblings, (
        f"{family.name}: siblings + glu fired {fused}x, expected >= {family.min_siblings} ({family.where})\n{text}"
    )


def build_or_skip(family: Family, **kw) -> torch.nn.Module:
    try:
        return build(family, **kw)
    except FamilyUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_fp32_cpu(family):
    model = build_or_skip(family)
    run = compile_and_run(family, model, input_ids())
    check(family, run, FP32_TOL)
    if family.name in GLU_FAMILIES:  # float weights: glu (glu_linear) fires in every gated MLP too
        counts = inductor_fuse.total_counts(run.reports)
        assert counts["glu"] == GLU_FAMILIES[family.name], counts


# On CUDA the MoE families run their experts as a loop over experts ("eager"), not transformers'
# default grouped_mm: with torch 2.11 on an H200, stock Inductor's compiled grouped_mm path was
# measured wrong and nondeterministic without any rule of ours involved (docs/robustness.md);
# test_grouped_mm_warning_gpu checks that the backend says so.
GPU_EXPERTS = "eager"


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_bf16_gpu(family):
    model = build_or_skip(family, dtype=torch.bfloat16, device="cuda", experts=GPU_EXPERTS)
    check(family, compile_and_run(family, model, input_ids(device="cuda")), BF16_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_q4k_gpu(family):
    # Compiled vs eager of the same quantized model: the rewrite must not change what Q4_K computes.
    model = build_or_skip(family, hidden=256, dtype=torch.bfloat16, device="cuda", experts=GPU_EXPERTS)
    inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt="q4_k"))
    assert any(isinstance(m, inductor_fuse.QuantizedLinear) for m in model.modules())
    check(family, compile_and_run(family, model, input_ids(device="cuda")), BF16_TOL)


@pytest.mark.gpu
def test_grouped_mm_warning_gpu():
    """A CUDA graph that calls grouped_mm (Mixtral with transformers' default experts path): the
    backend logs the measured stock-Inductor problem once and notes it in the report."""
    family = next(f for f in FAMILIES if f.name == "mixtral")
    model = build_or_skip(family, dtype=torch.bfloat16, device="cuda")
    if model.config._experts_implementation != "grouped_mm":
        pytest.skip(f"transformers chose experts_implementation={model.config._experts_implementation!r}")
    inductor_fuse.clear_reports()
    with torch.no_grad():
        torch.compile(model, backend="inductor_fuse")(input_ids(device="cuda"), use_cache=False)
    notes = [n for rep in inductor_fuse.all_reports() for n in rep.notes]
    assert GROUPED_MM_CUDA in notes, notes


# The families where the issue asks the new rules to fire (2 layers each): on quantized weights
# (glu_qlinear) and on float ones (glu_linear).
GLU_FAMILIES = {"llama": 2, "mistral": 2, "qwen2": 2, "qwen3": 2, "gemma3": 2, "qwen3_5": 2}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.name in GLU_FAMILIES], ids=lambda f: f.name)
def test_family_int4_cpu(family):
    """The same models int4-quantized (group 32) on CPU: glu fires in every gated MLP (conv1d in the
    GatedDeltaNet layer of Qwen3.5), and the compiled logits are the eager ones of the same
    quantized model."""
    model = build_or_skip(family)
    inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt="int4_g32"))
    run = compile_and_run(family, model, input_ids())
    check(family, run, FP32_TOL)
    counts = inductor_fuse.total_counts(run.reports)
    assert counts["glu"] == GLU_FAMILIES[family.name], counts
    assert counts["conv1d"] == (1 if family.name == "qwen3_5" else 0), counts
