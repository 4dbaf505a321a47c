"""Helpers of the GPU benchmarks that run without a GPU: bench_kernels.small_m_summary (the verdict
line per shape against the few-rows targets, docs/kernels.md "A few rows") and w4a16_grid;
ab_decode's setting parser and summary, and one A/B run of it on the tiny CPU model; bench_decode's
README table from a results file (markdown_table, --from-json); profile_decode's timeline (the
GPU's time split among overlapping kernels); the
fragment-order layouts of bench_fragment_order, their pure-torch reading against the Q4_K
dequantizer, and its dp4a prototype under the interpreter (the MMA prototype is Gluon, GPU only:
the benchmark checks it there)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from inductor_fuse.kernels._common import QuantizedActivation
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import ab_decode  # noqa: E402 -- importing these launches nothing
import bench_decode  # noqa: E402
import bench_fragment_order as fragment  # noqa: E402
import bench_kernels  # noqa: E402
import profile_decode  # noqa: E402


def _row(shape, M, op, bf16, fmt="q4_k"):
    return {"shape": shape, "fmt": fmt, "M": M, "op_us": op, "bf16_us": bf16}


def test_small_m_summary_states_both_targets_per_shape():
    # figures of 2026-12-04-small-m-w4a16-split.json (qkv), and a made-up shape that meets both
    rows = [
        _row("qkv", 1, 7.1, 15.5),
        _row("qkv", 4, 16.6, 16.0),
        _row("qkv", 8, 14.9, 15.6),
        _row("qkv", 16, 15.1, 15.8),
        _row("qkv", 64, 23.6, 16.2),
        _row("small", 16, 10.5, 20.0, fmt="q6_k"),
        _row("small", 1, 10.0, 20.0, fmt="q6_k"),
        _row("small", 4, 11.0, 20.0, fmt="q6_k"),
    ]
    assert bench_kernels.small_m_summary(rows) == [
        "qkv q4_k: M <= 16 at most 2.34x the M = 1 time (M = 4; target 1.15x: not met); slower than bf16 at M = 4, 64",
        "small q6_k: M <= 16 at most 1.10x the M = 1 time (M = 4; target 1.15x: met); never slower than bf16",
    ]


def test_small_m_summary_without_m1():
    lines = bench_kernels.small_m_summary([_row("o", 16, 12.0, 13.6)])
    assert lines == ["o q4_k: no M = 1 and M = 2..16 pair measured; never slower than bf16"]


def test_w4a16_grid_varies_what_it_says_around_the_default_rows():
    q4, q6 = bench_kernels.w4a16_grid("q4_k"), bench_kernels.w4a16_grid("q6_k")
    assert len(q4) == 32 and len(q6) == 16 and len(set(q4)) == 32
    assert {c.block_n for c in q4 + q6} == {128} and {c.block_u for c in q6} == {1}
    assert {(c.unroll, c.programs_per_sm) for c in q4} == {(1, 4), (1, 7), (2, 4), (2, 7)}


def _quantized_x(M: int, K: int, seed: int) -> QuantizedActivation:
    # an int8 activation with a scale per 32 (act_quant's layout), made without act_quant
    gen = torch.Generator().manual_seed(seed)
    xq = torch.randint(-127, 128, (M, K), generator=gen, dtype=torch.int8)
    xd = torch.rand(M, K // 32, generator=gen) * 0.05 + 1e-3
    xs32 = xd * xq.view(M, K // 32, 32).sum(-1).float()
    return QuantizedActivation(xq.view(torch.int32), xd, xs32, xd.new_zeros(M, K // 16))


def test_fragment_order_weights_hold_each_threads_bytes_together():
    N, K = 32, 512
    qs, sm, dm = random_planes("q4_k", N, K, seed=3)
    wr, smr, dmr = fragment.repack_weights([qs, sm, dm])
    assert wr.shape == (N // 16, K // 64, 32, 16)
    gen = torch.Generator().manual_seed(0)
    sizes = (N // 16, K // 64, 8, 4, 2, 2, 4)  # n16, chunk, g, t, h, q, i
    for _ in range(200):
        n16, c, g, t, h, q, i = (int(torch.randint(0, hi, (), generator=gen)) for hi in sizes)
        assert wr[n16, c, 4 * g + t, 8 * h + 4 * q + i] == qs[16 * n16 + 8 * h + g, 32 * c + 16 * q + 4 * t + i]
    rows = torch.arange(N)
    assert torch.equal(smr[rows // 16, :, rows % 16], sm.view(torch.int32))
    assert torch.equal(dmr[rows // 16, :, rows % 16], dm.view(torch.int32))


@pytest.mark.parametrize("M", [1, 5, 8, 11, 16])
def test_fragment_order_reference_equals_the_dequantized_product(M):
    N, K = 48, 768
    planes = random_planes("q4_k", N, K, seed=M)
    xa = _quantized_x(M, K, seed=M)
    got = fragment.reference(*fragment.repack_x(xa, M, K, fragment.block_m_for(M)), fragment.repack_weights(planes), M)
    w = FORMATS["q4_k"].dequantize(planes).double()
    x = (xa.xq.view(torch.int8).view(M, K // 32, 32).double() * xa.xd.double()[..., None]).view(M, K)
    want = x @ w.T  # (the dequantizer and xs32 round in float32: about 1e-7 of |want|)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_fragment_order_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="1 <= M <= 16"):
        fragment.block_m_for(17)
    with pytest.raises(ValueError, match="N % 16"):
        fragment.repack_weights(random_planes("q4_k", 24, 256))


@pytest.mark.parametrize(
    ("M", "split", "N", "K"), [(1, 2, 64, 512), (3, 1, 96, 768), (5, 4, 64, 1024), (8, 2, 32, 512)]
)
def test_fragment_order_dp4a_prototype_matches_the_reference(M, split, N, K):
    # against the float64 reading of the same tensors
    planes = random_planes("q4_k", N, K, seed=M)
    xa = _quantized_x(M, K, seed=M)
    xp, packed = fragment.repack_x(xa, M, K, 8), fragment.repack_weights(planes)
    got = fragment.fragment_dp4a_linear(xp, packed, M, torch.float32, split=split, groups=2).double()
    want = fragment.reference(*xp, packed, M)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with pytest.raises(ValueError, match="1 <= M <= 8"):
        fragment.fragment_dp4a_linear(fragment.repack_x(xa, M, K, 16), packed, M, torch.float32, split=1)


def test_ab_decode_parses_a_setting_as_its_type():
    assert ab_decode.parse_setting("pdl=0,1") == ("pdl", [False, True])
    assert ab_decode.parse_setting("small_m=auto,off,sync") == ("small_m", ["auto", "off", "sync"])
    for bad in ("no_such=0,1", "pdl=1", "pdl=0,yes"):
        with pytest.raises(SystemExit):
            ab_decode.parse_setting(bad)


def test_ab_decode_summary_medians_and_gain():
    def row(ctx, v, tok_s):
        return {"model": "m", "system": "s", "context": ctx, "ab_value": v, "decode_tok_s": tok_s}

    rows = [row(512, False, 400.0), row(512, True, 430.0), row(512, False, 398.0), row(512, True, 428.0)]
    rows += [row(512, False, 402.0), row(512, True, 429.0), row(4096, False, 300.0), row(4096, True, 330.0)]
    got = {(s["context"], s["value"]): s for s in ab_decode.summarize(rows, [False, True])}
    assert (got[512, False]["median"], got[512, False]["min"], got[512, False]["max"]) == (400.0, 398.0, 402.0)
    assert got[512, True]["median"] == 429.0 and got[512, True]["runs"] == 3
    assert got[512, False]["gain"] == 0.0 and got[512, True]["gain"] == pytest.approx(429 / 400 - 1)
    assert got[4096, True]["gain"] == pytest.approx(0.1)


def test_ab_decode_runs_both_values_in_turn(tmp_path, monkeypatch, capsys):
    # the whole tool on the tiny CPU model: one round of two values, each a bench_decode collection
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [
        "ab_decode.py", "pdl=0,1", "--rounds", "1", "--", "--models", "tiny-q4_k_m", "--device", "cpu",
        "--contexts", "16", "--prompt", "4", "--tokens", "2", "--repeats", "1", "--prefill", "eager",
        "--device-kind", "cpu", "--workdir", str(tmp_path),
    ])  # fmt: skip
    ab_decode.main()
    (path,) = tmp_path.glob("*-ab-decode.json")
    doc = json.loads(path.read_text())
    assert doc["setting"] == "pdl" and [r["ab_value"] for r in doc["rows"]] == [False, True]
    assert all(r["decode_tok_s"] > 0 and r["system"] == "inductor_fuse" for r in doc["rows"])
    assert [s["value"] for s in doc["summary"]] == [False, True]
    assert "A/B of pdl" in capsys.readouterr().out


def _decode_row(model, system, ctx, tok_s, kv_buffer=32904, graphs="trees"):
    return {"model": model, "system": system, "context": ctx, "decode_tok_s": tok_s, "decode_min": tok_s - 1,
            "decode_max": tok_s + 1, "kv_buffer": kv_buffer, "cuda_graphs": graphs, "compile_s": 30.0,
            "load_s": 3.0}  # fmt: skip


def test_decode_markdown_table_rows_ratios_and_gaps():
    rows = [
        _decode_row("llama3-8b-q4_k_m", "inductor_fuse", 512, 440.0),
        _decode_row("llama3-8b-q4_k_m", "inductor-tinygemm", 512, 200.0),
        _decode_row("llama3-8b-q4_k_m", "inductor_fuse", 4096, 400.0),  # no tinygemm row there
        _decode_row("llama3-8b-q4_k_m", "inductor_fuse", 512, 999.0, kv_buffer=648),  # a short buffer: left out
        _decode_row("llama3-8b-q4_k_m", "inductor_fuse", 512, 777.0, graphs="plain"),  # the second mode: left out
    ]
    lines = bench_decode.markdown_table(rows).splitlines()
    assert lines[0].startswith("| model | context | inductor_fuse, tok/s | stock, tinygemm, tok/s | llama.cpp")
    assert lines[0].endswith("| inductor_fuse / stock, tinygemm |")
    assert lines[2] == "| llama3-8b-q4_k_m | 512 | **440.0** (439.0-441.0) | 200.0 | 272.2 | 2.20x |"
    assert lines[3] == "| llama3-8b-q4_k_m | 4,096 | **400.0** (399.0-401.0) | - | 253.5 | - |"
    assert len([x for x in lines if x.startswith("| llama3")]) == 2
    assert lines[-1] == (
        "llama3-8b-q4_k_m inductor_fuse: compile 30.0 s, load 3.0 s; "
        "llama3-8b-q4_k_m stock, tinygemm: compile 30.0 s, load 3.0 s."
    )


def test_decode_from_json_prints_the_table_and_runs_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "2026-01-01-decode.json"
    rows = [_decode_row("llama3-1b-q4_k_m", "inductor_fuse", 512, 1500.0)]
    path.write_text(json.dumps(rows))
    monkeypatch.setattr(bench_decode, "collect", lambda args: pytest.fail("--from-json ran a benchmark"))
    monkeypatch.setattr(sys, "argv", ["bench_decode.py", "--from-json", str(path)])
    bench_decode.main()
    assert "| llama3-1b-q4_k_m | 512 | **1,500.0** (1,499.0-1,501.0) | 893.3 |" in capsys.readouterr().out


def test_profile_timeline_charges_overlap_once_and_adds_up_to_the_span():
    # a matvec; a norm launched early under PDL (starts at 5, ends at 15: it adds 5); idle 15-20; a
    # merge; an act_quant inside the merge's run (adds nothing); idle 22-23; then the norm again,
    # after that act_quant
    ev = [
        {"name": "matvec_kernel", "ts": 0.0, "dur": 10.0, "args": {"grid": [2048, 1, 1]}},
        {"name": "_rmsnorm_quantize_kernel", "ts": 5.0, "dur": 10.0, "args": {"grid": [1, 1, 1]}},
        {"name": "_merge_kernel", "ts": 20.0, "dur": 2.0, "args": {"grid": [32, 1, 1]}},
        {"name": "_act_quant_kernel", "ts": 21.0, "dur": 0.5, "args": {"grid": [1, 1, 1]}},
        {"name": "_rmsnorm_quantize_kernel", "ts": 23.0, "dur": 1.0, "args": {"grid": [1, 1, 1]}},
    ]
    t = profile_decode.timeline(list(reversed(ev)), steps=2)  # sorted by start inside
    assert t["span_us_per_token"] == 12.0 and t["gap_us_per_token"] == 3.0  # (24 - 0) / 2, (5 + 1) / 2
    roles = {(r["name"], r["grid"], r["after"]): r for r in t["roles"]}
    assert roles[("matvec_kernel", "2048", "(start)")]["exclusive_us_per_token"] == 5.0
    norm_after_matvec = roles[("_rmsnorm_quantize_kernel", "1", "matvec")]
    assert norm_after_matvec["exclusive_us_per_token"] == 2.5 and norm_after_matvec["device_us_per_launch"] == 10.0
    assert roles[("_act_quant_kernel", "1", "attention")]["exclusive_us_per_token"] == 0.0
    assert roles[("_rmsnorm_quantize_kernel", "1", "act_quant")]["launches_per_token"] == 0.5
    assert roles[("_merge_kernel", "32", "rmsnorm+act_quant")]["idle_before_us_per_token"] == 2.5  # 15 -> 20
    assert roles[("_rmsnorm_quantize_kernel", "1", "act_quant")]["idle_before_us_per_token"] == 0.5  # 22 -> 23
    total = sum(r["exclusive_us_per_token"] for r in t["roles"]) + t["gap_us_per_token"]
    assert total == t["span_us_per_token"]
    assert t["roles"][0]["name"] == "matvec_kernel"  # the largest share first
