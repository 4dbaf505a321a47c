"""Kernel benchmark: torch.ops.inductor_fuse.qlinear on Llama-3-8B shapes against bf16 F.linear and
tinygemm int4 (aten._weight_int4pack_mm, group 32 and 128).

Method (see the device notes' METHOD.md): measure a device-to-device copy first (bytes read +
written / time) as the bandwidth ceiling; for each case rotate enough weight copies that they
exceed 3x the L2, capture many calls in one CUDA graph (launch gaps out, but the launches our op
really makes stay in: act_quant + matvec), time graph replays with CUDA events, take the median.
GB/s counts the bytes every call must read (weight planes + activation) and write (output).

    python benchmarks/bench_kernels.py                       # full table + JSON
    python benchmarks/bench_kernels.py --quick               # M=1 only, fewer shapes
    python benchmarks/bench_kernels.py --crossover           # matvec vs GEMM over M
    python benchmarks/bench_kernels.py --small-m             # M = 1..64: W4A8 matvec / int8_mma, W4A16, bf16;
                                                             # then a line per shape against the few-rows
                                                             # targets (small_m_summary, also in the JSON)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402

import inductor_fuse.kernels.ops  # noqa: E402,F401
from inductor_fuse import config  # noqa: E402
from inductor_fuse.kernels import dispatch  # noqa: E402
from inductor_fuse.kernels._common import act_quant, launch_matvec, tuned_configs  # noqa: E402
from inductor_fuse.kernels.gemm import dequant_mm, qgemm  # noqa: E402
from inductor_fuse.kernels.int8_mma import MmaConfig, int8_mma  # noqa: E402
from inductor_fuse.kernels.registry import KERNELS  # noqa: E402
from inductor_fuse.kernels.testing import random_planes  # noqa: E402
from inductor_fuse.kernels.w4a16_mma import FORMATS as W4A16_FORMATS  # noqa: E402
from inductor_fuse.kernels.w4a16_mma import W4A16Config, w4a16_mma  # noqa: E402

SHAPES = [  # name, N, K, formats
    ("qkv", 6144, 4096, ["q4_k"]),
    ("gate_up", 28672, 4096, ["q4_k", "q4_0", "iq4_xs"]),
    ("down", 4096, 14336, ["q4_k", "q5_k", "q6_k"]),  # q5_k: Q4_K_S's ffn_down in the first eighth
    ("lm_head", 128256, 4096, ["q6_k"]),
]
L2_BYTES = 50 * 2**20


def copy_bandwidth(dev) -> float:
    n = 1 << 30  # 1 GiB each way
    a = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    del a, b
    return 2 * n / statistics.median(ts) / 1e9


def n_copies(bytes_per_copy: int) -> int:
    return max(2, math.ceil(3 * L2_BYTES / max(bytes_per_copy, 1)) + 1)


def weight_copies(fmt: str, N: int, K: int, dev, seed: int = 0) -> list:
    """Enough random weights of one shape (seeds seed, seed + 1, ...) to exceed 3x the L2 together."""
    probe = random_planes(fmt, N, K, dev, seed=seed)
    return [probe] + [random_planes(fmt, N, K, dev, seed=seed + i + 1) for i in range(n_copies(plane_bytes(probe)) - 1)]


def time_graph(fns, calls_per_copy: int = 0, replays: int = 7) -> float:
    """fns: one closure per weight copy. Captures rounds over all copies in one CUDA graph;
    returns the median seconds per call."""
    total_target = 200  # calls per graph
    rounds = max(1, calls_per_copy or total_target // len(fns))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:  # warm up (compiles, tunes) outside the capture
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):  # captured on the warm-up's stream, as torch.compile's graph trees do
        for _ in range(rounds):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(replays):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        g.replay()
        en.record()
        en.synchronize()
        ts.append(st.elapsed_time(en) * 1e-3 / (rounds * len(fns)))
    del g
    return statistics.median(ts)


def plane_bytes(planes) -> int:
    return sum(p.numel() * p.element_size() for p in planes)


def tinygemm_weights(N, K, group, dev, seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randint(0, 256, (N, K // 2), generator=g, device=dev, dtype=torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
    sz = (torch.rand((K // group, N, 2), generator=g, device=dev) * 0.02 + 1e-3).to(torch.bfloat16)
    return packed, sz, N * K // 2 + sz.numel() * 2


def launch_spec_matvec(spec, xa, views, M, N, K, cfg, dtype, out):
    """The format's matvec kernel alone (activation quantized outside)."""
    return launch_matvec(spec, xa, views, None, M, N, K, cfg, dtype, out=out)


def bench_case(name, N, K, fmt, M, dev, results, with_baselines=True, seed=0):
    spec = KERNELS[fmt]
    row = {"shape": name, "N": N, "K": K, "fmt": fmt, "M": M}
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    copies = weight_copies(fmt, N, K, dev, seed)
    probe, wbytes = copies[0], plane_bytes(copies[0])
    io = M * K * 2 + M * N * 2
    op = torch.ops.inductor_fuse.qlinear
    t = time_graph([lambda p=p: op(x, p, None, fmt) for p in copies])
    row.update(ours_us=t * 1e6, ours_gbs=(wbytes + io) / t / 1e9, weight_bytes=wbytes)
    if M <= spec.matvec_max_m:
        row["path"] = "matvec"
    else:
        row["path"] = "fused" if M < spec.fused_gemm_max_m else "deq+mm"
    if M <= spec.matvec_max_m:  # the matvec kernel alone, activation quantized outside
        xa = act_quant(x, interleave=spec.interleave)
        dispatch.matvec(x, probe, None, fmt)  # tune
        cfg = tuned_configs().get(("matvec", fmt, M, N, K), spec.matvec_config(M, N, K))
        out = torch.empty((M, N), dtype=x.dtype, device=dev)
        views = [spec.plane_views(p) for p in copies]
        tk = time_graph([lambda v=v: launch_spec_matvec(spec, xa, v, M, N, K, cfg, x.dtype, out) for v in views])
        row.update(matvec_only_us=tk * 1e6, matvec_only_gbs=(wbytes + io) / tk / 1e9, config=str(cfg))
    if M > spec.matvec_max_m:  # both large-M paths, for the record
        tf = time_graph([lambda p=p: qgemm(x, p, None, fmt) for p in copies])
        td = time_graph([lambda p=p: dequant_mm(x, p, None, fmt) for p in copies])
        row.update(fused_gemm_us=tf * 1e6, dequant_mm_us=td * 1e6)
    del copies
    if with_baselines:
        wb = N * K * 2
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(n_copies(wb))]
        tb = time_graph([lambda w=w: F.linear(x, w) for w in ws])
        row.update(bf16_us=tb * 1e6, bf16_gbs=(wb + io) / tb / 1e9)
        del ws
        for group in (32, 128):
            tw = [tinygemm_weights(N, K, group, dev, seed + i) for i in range(n_copies(N * K // 2))]
            tg = time_graph([lambda w=w: torch.ops.aten._weight_int4pack_mm(x, w[0], group, w[1]) for w in tw])
            row.update({f"tinygemm_g{group}_us": tg * 1e6, f"tinygemm_g{group}_gbs": (tw[0][2] + io) / tg / 1e9})
            del tw
    torch.cuda.empty_cache()
    results.append(row)
    return row


def crossover(dev, out):
    """Time matvec (act_quant + matvec) and GEMM over M; the crossover is the largest M at which
    the matvec is still faster."""
    rows = []
    for name, N, K, fmt in [
        ("gate_up", 28672, 4096, "q4_k"),
        ("down", 4096, 14336, "q4_k"),
        ("down", 4096, 14336, "q6_k"),
    ]:
        copies = weight_copies(fmt, N, K, dev)
        for M in (2, 4, 8, 16):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            tm = time_graph([lambda p=p: dispatch.matvec(x, p, None, fmt) for p in copies])
            td = time_graph([lambda p=p: dequant_mm(x, p, None, fmt) for p in copies])
            tg = time_graph([lambda p=p: qgemm(x, p, None, fmt) for p in copies])
            rows.append(
                {
                    "shape": name,
                    "fmt": fmt,
                    "M": M,
                    "matvec_us": tm * 1e6,
                    "dequant_mm_us": td * 1e6,
                    "fused_gemm_us": tg * 1e6,
                }
            )
            print(
                f"crossover {name:8s} {fmt:5s} M={M:3d} matvec {tm * 1e6:8.1f} us  dequant+cuBLAS {td * 1e6:8.1f} us"
                f"  fused gemm {tg * 1e6:8.1f} us",
                flush=True,
            )
        del copies
        torch.cuda.empty_cache()
    best = {}
    for fmt in {r["fmt"] for r in rows}:
        ms = sorted({r["M"] for r in rows if r["fmt"] == fmt})
        cross = 1
        for m in ms:
            rs = [r for r in rows if r["fmt"] == fmt and r["M"] == m]
            if sum(r["matvec_us"] for r in rs) <= sum(min(r["dequant_mm_us"], r["fused_gemm_us"]) for r in rs):
                cross = m
        best[fmt] = cross
    out["crossover"] = {"rows": rows, "matvec_max_m": best}
    print("crossover (largest M where matvec wins, summed over shapes):", best)


SMALL_M_SHAPES = [  # the Llama-3-8B Q4_K_M decode shapes: name, N, K, fmt
    ("qkv", 6144, 4096, "q4_k"),
    ("o", 4096, 4096, "q4_k"),
    ("gate_up", 28672, 4096, "q4_k"),
    ("down", 4096, 14336, "q4_k"),
    ("down", 4096, 14336, "q6_k"),
    ("lm_head", 128256, 4096, "q6_k"),
]


def small_m(dev, out, ms, mma_sweep=False, w4a16_sweep=False):
    """M = 1..64 on the decode shapes, each path timed as the op runs it (activation quantization
    included): `op` (what the dispatcher runs), the W4A8 matvec (dp4a), int8_mma (W4A8 on the int8
    tensor cores), w4a16_mma (W4A16 on the bf16 tensor cores, packed decode; its formats), W4A16
    qgemm (`w4a16_us`: dequantize in registers + bf16 tl.dot) and bf16 cuBLAS; with mma_sweep,
    every int8_mma config of a small grid too; with w4a16_sweep, every w4a16_mma config of
    w4a16_grid (`w4a16_mma_sweep`: (config, us); `w4a16_mma_best_*`)."""
    rows = []
    for name, N, K, fmt in SMALL_M_SHAPES:
        copies = weight_copies(fmt, N, K, dev)
        wbytes = plane_bytes(copies[0])
        op = torch.ops.inductor_fuse.qlinear
        wb = N * K * 2
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(n_copies(wb))]
        for M in ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            row = {"shape": name, "N": N, "K": K, "fmt": fmt, "M": M, "weight_bytes": wbytes}
            row["op_us"] = 1e6 * time_graph([lambda p=p: op(x, p, None, fmt) for p in copies])
            if M <= 16:
                row["matvec_us"] = 1e6 * time_graph([lambda p=p: dispatch.matvec(x, p, None, fmt) for p in copies])
            if M >= 2:
                row["int8_mma_us"] = 1e6 * time_graph([lambda p=p: int8_mma(x, p, None, fmt) for p in copies])
            if M >= 2 and fmt in W4A16_FORMATS:
                row["w4a16_mma_us"] = 1e6 * time_graph([lambda p=p: w4a16_mma(x, p, None, fmt) for p in copies])
            row["w4a16_us"] = 1e6 * time_graph([lambda p=p: qgemm(x, p, None, fmt) for p in copies])
            row["bf16_us"] = 1e6 * time_graph([lambda w=w: F.linear(x, w) for w in ws])
            if mma_sweep and M >= 2:
                xa = act_quant(x)
                best, tried = None, []
                bm = min(max(16, triton.next_power_of_2(M)), 64)
                for wf, bn, split, (warps, stages) in itertools.product(
                    (True, False), (64, 128), (1, 2, 4, 8), ((4, 2), (4, 3), (4, 4), (8, 3))
                ):
                    cfg = MmaConfig(bn, bm, split, warps, stages, weights_first=wf)
                    try:
                        fns = [lambda p=p: int8_mma(x, p, None, fmt, xa=xa, config=cfg) for p in copies]
                        t = time_graph(fns)
                    except Exception as e:  # noqa: BLE001 -- a config that does not compile
                        print(f"  {cfg}: failed {type(e).__name__}", flush=True)
                        continue
                    tried.append((str(cfg), t * 1e6))
                    if best is None or t < best[0]:
                        best = (t, cfg)
                row["int8_mma_best_us"], row["int8_mma_best_config"] = best[0] * 1e6, str(best[1])
                row["int8_mma_sweep"] = tried  # (config, us)
                for wf in (True, False):
                    mine = [t for c, t in tried if f"weights_first={wf}" in c]
                    row[f"int8_mma_best_weights_first_{wf}_us"] = min(mine) if mine else None
            if w4a16_sweep and M >= 2 and fmt in W4A16_FORMATS:
                tried = []
                for cfg in w4a16_grid(fmt):
                    try:
                        t = time_graph([lambda p=p, c=cfg: w4a16_mma(x, p, None, fmt, config=c) for p in copies])
                    except Exception as e:  # noqa: BLE001 -- a config that does not compile or fit
                        print(f"  {cfg}: failed {type(e).__name__}", flush=True)
                        continue
                    tried.append((str(cfg), t * 1e6))
                if tried:
                    row["w4a16_mma_sweep"] = tried
                    best = min(tried, key=lambda c: c[1])
                    row["w4a16_mma_best_us"], row["w4a16_mma_best_config"] = best[1], best[0]
            rows.append(row)
            cells = "  ".join(f"{k.removesuffix('_us')} {v:7.1f}" for k, v in row.items() if k.endswith("_us"))
            extra = f"  best {row['int8_mma_best_config']}" if "int8_mma_best_config" in row else ""
            extra += f"  best w4a16 {row['w4a16_mma_best_config']}" if "w4a16_mma_best_config" in row else ""
            print(f"small-m {name:8s} {fmt} M={M:3d}  {cells}{extra}", flush=True)
        del copies, ws
        torch.cuda.empty_cache()
    out["small_m"] = rows
    out["small_m_summary"] = small_m_summary(rows)
    print("\n".join(out["small_m_summary"]), flush=True)


def w4a16_grid(fmt: str) -> list:
    """The w4a16_mma configs --w4a16-sweep times: the default's 128 rows, with units per step (Q4_K),
    warps, stages, programs per SM and loop unroll varied."""
    units = (1, 2) if fmt == "q4_k" else (1,)
    return [
        W4A16Config(block_n=128, block_u=u, num_warps=w, num_stages=st, programs_per_sm=pps, unroll=un)
        for u, w, st, pps, un in itertools.product(units, (4, 8), (3, 4), (4, 7), (1, 2))
    ]


def small_m_summary(rows: list[dict], within: float = 1.15, max_m: int = 16) -> list[str]:
    """One line per shape against the few-rows targets: what the dispatcher runs (op_us) at
    2 <= M <= max_m against its M = 1 time (target: within `within`), and the M where it is slower
    than bf16 cuBLAS (target: none)."""
    lines = []
    for key in dict.fromkeys((r["shape"], r["fmt"]) for r in rows):
        mine = sorted((r for r in rows if (r["shape"], r["fmt"]) == key), key=lambda r: r["M"])
        one = next((r["op_us"] for r in mine if r["M"] == 1), None)
        few = [r for r in mine if 2 <= r["M"] <= max_m]
        if one is not None and few:
            worst = max(few, key=lambda r: r["op_us"])
            ratio = worst["op_us"] / one
            verdict = "met" if ratio <= within else "not met"
            near = f"M <= {max_m} at most {ratio:.2f}x the M = 1 time (M = {worst['M']}; target {within}x: {verdict})"
        else:
            near = f"no M = 1 and M = 2..{max_m} pair measured"
        slower = [r["M"] for r in mine if r["op_us"] > r["bf16_us"]]
        vs_bf16 = f"slower than bf16 at M = {', '.join(map(str, slower))}" if slower else "never slower than bf16"
        lines.append(f"{key[0]} {key[1]}: {near}; {vs_bf16}")
    return lines


def sweep(dev, out, args_dump=None, sweep_formats=("q4_k", "q6_k"), sweep_ms=(1, 4)):
    """Every matvec candidate config (kernel alone, M=1) on the decode shapes."""
    rows = []
    for name, N, K, fmt in [
        ("gate_up", 28672, 4096, "q4_k"),
        ("down", 4096, 14336, "q4_k"),
        ("qkv", 6144, 4096, "q4_k"),
        ("gate_up", 28672, 4096, "q4_0"),
        ("gate_up", 28672, 4096, "iq4_xs"),
        ("down", 4096, 14336, "q6_k"),
        ("lm_head", 128256, 4096, "q6_k"),
    ]:
        if fmt not in sweep_formats:
            continue
        spec = KERNELS[fmt]
        copies = weight_copies(fmt, N, K, dev)
        wbytes = plane_bytes(copies[0])
        views = [spec.plane_views(p) for p in copies]
        for M in sweep_ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            xa = act_quant(x, interleave=spec.interleave)
            o = torch.empty((M, N), dtype=x.dtype, device=dev)
            for cfg in spec.matvec_configs:
                launched = []  # the compiled kernel of every launch (registers, spills, asm)
                try:
                    with config.patch(on_matvec_launch=launched.append):
                        t = time_graph(
                            [lambda v=v: launch_spec_matvec(spec, xa, v, M, N, K, cfg, x.dtype, o) for v in views]
                        )
                except Exception as e:  # noqa: BLE001
                    print(f"sweep {name} {fmt} {cfg}: failed {type(e).__name__}: {str(e)[:200]}")
                    continue
                pct = 100 * wbytes / t / 1e9 / out["copy_gbs"]
                k = launched[-1]
                regs = (getattr(k, "n_regs", -1), getattr(k, "n_spills", -1))
                rows.append(
                    {
                        "shape": name,
                        "fmt": fmt,
                        "M": M,
                        "config": str(cfg),
                        "us": t * 1e6,
                        "pct": pct,
                        "regs_spills": regs,
                    }
                )
                print(
                    f"sweep {name:8s} {fmt} M={M} {cfg}: {t * 1e6:8.1f} us {pct:5.1f}% regs/spills {regs}", flush=True
                )
                if args_dump and cfg == spec.matvec_config(M, N, K) and M == 1 and name in ("gate_up", "lm_head"):
                    for kind in ("ttgir", "sass"):
                        try:
                            with open(os.path.join(args_dump, f"{fmt}_{name}_M{M}.{kind}"), "w") as f:
                                f.write(k.asm[kind])
                        except Exception as e:  # noqa: BLE001
                            print("asm dump failed", kind, e)
        del copies, views
        torch.cuda.empty_cache()
    out["sweep"] = rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="M=1 only")
    ap.add_argument("--ms", default="1,4,16,512")
    ap.add_argument("--formats", default=None, help="comma-separated: only these formats of SHAPES (default: all)")
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--crossover-only", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="time every matvec config, then exit")
    ap.add_argument("--sweep-formats", default="q4_k,q6_k")
    ap.add_argument("--sweep-ms", default="1,4")
    ap.add_argument("--small-m", action="store_true", help="M = 1..64 on the decode shapes, then exit")
    ap.add_argument("--small-ms", default="1,2,4,8,16,32,64")
    ap.add_argument("--mma-sweep", action="store_true", help="with --small-m: every int8_mma config")
    ap.add_argument("--w4a16-sweep", action="store_true", help="with --small-m: every w4a16_mma config of w4a16_grid")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--dump", default=None, help="folder for ttgir/sass of the default configs, M = 1 (--sweep)")
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON", "benchmarks/results/kernels_h200.json"))
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    out = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": "CUDA graph of many calls over rotated weight copies (>3x 50 MB L2), median of replays",
        "small_m": config.settings.small_m,  # INDUCTOR_FUSE_SMALL_M: "sync" makes op w4a16_sync up to M = 16
    }
    bw = copy_bandwidth(dev)
    out["copy_gbs"] = bw
    print(f"{out['gpu']}  torch {out['torch']}  triton {out['triton']}  copy bandwidth {bw:.0f} GB/s", flush=True)
    if args.sweep:
        sweep(dev, out, args.dump, args.sweep_formats.split(","), [int(m) for m in args.sweep_ms.split(",")])
        return _save(out, args.json)
    if args.small_m:
        small_m(dev, out, [int(m) for m in args.small_ms.split(",")], args.mma_sweep, args.w4a16_sweep)
        return _save(out, args.json)
    if args.crossover:
        crossover(dev, out)
        if args.crossover_only:
            return _save(out, args.json)
    ms = [1] if args.quick else [int(m) for m in args.ms.split(",")]
    results = []
    only = None if args.formats is None else set(args.formats.split(","))
    for name, N, K, fmts in SHAPES:
        for fmt in fmts:
            if only is not None and fmt not in only:
                continue
            for M in ms:
                r = bench_case(name, N, K, fmt, M, dev, results, with_baselines=not args.no_baselines)
                print(_fmt_row(r, bw), flush=True)
    out["results"] = results
    out["tuned"] = {str(k): str(v) for k, v in tuned_configs().items()}
    _save(out, args.json)
    print()
    print(f"time per call in us (% of copy bandwidth {bw:.0f} GB/s for matvec rows); GPU {out['gpu']}")
    print("kernel only: the matvec without act_quant (M <= matvec_max_m); bf16 = F.linear (cuBLAS)")
    print(
        f"{'shape':8s} {'fmt':5s} {'M':>4s} {'path':6s} {'ours':>16s} {'kernel only':>16s} {'bf16':>16s} "
        f"{'tinygemm g32':>16s} {'tinygemm g128':>16s} {'vs g128':>7s} {'vs bf16':>7s}"
    )
    for r in results:
        print(_fmt_row(r, bw))
    print(f"JSON: {args.json}")


def _save(out: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def _cell(us, gbs, bw):
    if us is None:
        return f"{'-':>16s}"
    return f"{us:8.1f} ({100 * gbs / bw:4.0f}%)"


def _fmt_row(r, bw):
    vs_tg = r["tinygemm_g128_us"] / r["ours_us"] if "tinygemm_g128_us" in r else float("nan")
    vs_bf = r["bf16_us"] / r["ours_us"] if "bf16_us" in r else float("nan")
    return (
        f"{r['shape']:8s} {r['fmt']:5s} {r['M']:4d} {r['path']:6s} {_cell(r['ours_us'], r['ours_gbs'], bw)} "
        f"{_cell(r.get('matvec_only_us'), r.get('matvec_only_gbs', 0), bw)} "
        f"{_cell(r.get('bf16_us'), r.get('bf16_gbs', 0), bw)} "
        f"{_cell(r.get('tinygemm_g32_us'), r.get('tinygemm_g32_gbs', 0), bw)} "
        f"{_cell(r.get('tinygemm_g128_us'), r.get('tinygemm_g128_gbs', 0), bw)} {vs_tg:7.2f} {vs_bf:7.2f}"
    )


if __name__ == "__main__":
    main()
