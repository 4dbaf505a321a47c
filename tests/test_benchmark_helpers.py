"""Helpers of the GPU benchmarks that run without a GPU: bench_kernels.small_m_summary, the verdict
line per shape against the few-rows targets (docs/kernels.md "A few rows")."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_kernels  # noqa: E402 -- importing it launches nothing


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
