"""Benchmark of `kernels/w4a16_sync.py` (W4A16 on mma.sync for 1-16 rows of x, reading the Q4_K / Q6_K
planes as they are) against the dispatched qlinear and bf16 cuBLAS, on the Llama-3-8B Q4_K_M shapes.

    python benchmarks/bench_w4a16_sync.py [--ms 1,2,4,8,16] [--configs 2x1,4x1,4x2,8x1] [--splits 1,2,4,8]
                                          [--prefetch 1,2] [--xstages 0,3] [--fmts q4_k,q6_k] [--maxnreg N]

Per shape and M: every config (warps x 16-row tiles per warp, K split, prefetch, x's ring) the shape takes, timed as
bench_kernels.time_graph does (a CUDA graph over rotated weight copies), its error against the
kernel's pure-torch `reference` (the output's rounding is what is left) and against the exact
product (`reference` with an exact decode), next to the error of bf16-rounded weights; a config that
fails is recorded in the JSON and skipped. The dispatched qlinear ("op", and "op_off" with
INDUCTOR_FUSE_SMALL_M=off: the kernels before w4a16_sync; each with the kernel that ran) and bf16
cuBLAS on random weights of the same shape, for scale.
Results: benchmarks/results/<date>-w4a16-sync.json.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import SMALL_M_SHAPES, time_graph, weight_copies  # noqa: E402
from common import print_table, write_json  # noqa: E402

from inductor_fuse import config  # noqa: E402
from inductor_fuse.kernels.dispatch import kernel_for  # noqa: E402
from inductor_fuse.kernels.w4a16_sync import FMTS, SyncConfig, reference, supports, w4a16_sync  # noqa: E402
from inductor_fuse.quant.formats import FORMATS  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--configs", default="2x1,4x1,4x2,8x1", help="warps x row tiles per warp (16 rows each)")
    ap.add_argument("--splits", default="1,2,4,8", help="K splits tried (each must divide K / 256)")
    ap.add_argument("--prefetch", default="1,2", help="blocks on that a loop step loads, tried")
    ap.add_argument(
        "--xstages", default="0", help="x's shared-memory ring (tiles; 0: none, x from global memory), tried"
    )
    ap.add_argument("--maxnreg", type=int, default=0, help="register cap per thread (0: none)")
    ap.add_argument("--fmts", default="", help="only these formats (default: q4_k,q6_k)")
    ap.add_argument("--json", help="write the results here (default: benchmarks/results/<date>-w4a16-sync.json)")
    args = ap.parse_args()

    dev = torch.device("cuda")
    ms = [int(m) for m in args.ms.split(",")]
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    splits = [int(s) for s in args.splits.split(",")]
    prefetches = [int(p) for p in args.prefetch.split(",")]
    xstages = [int(s) for s in args.xstages.split(",")]
    rows, table = [], []
    for name, N, K, fmt in SMALL_M_SHAPES:
        if fmt not in FMTS or (args.fmts and fmt not in args.fmts.split(",")):
            continue
        copies = weight_copies(fmt, N, K, dev)
        bf16 = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        w16 = FORMATS[fmt].dequantize(copies[0]).to(torch.bfloat16)  # the error of bf16 weights, for scale
        for M in ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            want = reference(x, copies[0], fmt)  # the kernel's own roundings
            exact = reference(x, copies[0], fmt, decode_dtype=torch.float64)
            op = torch.ops.inductor_fuse.qlinear(x, copies[0], None, fmt)
            row = {"shape": name, "fmt": fmt, "N": N, "K": K, "M": M, "maxnreg": args.maxnreg}
            ops = [lambda p=p: torch.ops.inductor_fuse.qlinear(x, p, None, fmt) for p in copies]
            row["op_us"] = 1e6 * time_graph(ops)
            row["op_kernel"] = kernel_for(fmt, M, N, K, x.dtype)
            with config.patch(small_m="off"):  # the dispatch without w4a16_sync: the matvec, w4a16_mma
                row["op_off_us"] = 1e6 * time_graph(ops)
                row["op_off_kernel"] = kernel_for(fmt, M, N, K, x.dtype)
            row["bf16_us"] = 1e6 * time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in bf16])
            row["op_err_vs_exact"] = _rel(op, exact)
            row["bf16_weights_err_vs_exact"] = _rel(torch.nn.functional.linear(x, w16), exact)
            best = None
            for (nw, reps), split, pf, xs in itertools.product(configs, splits, prefetches, xstages):
                if not supports(M, N, K, fmt, SyncConfig(nw, reps, split)):
                    continue
                key = f"{nw}x{reps}_split{split}_p{pf}" + (f"_xs{xs}" if xs else "")
                cfg = SyncConfig(nw, reps, split, args.maxnreg or None, pf, xs)
                fn = lambda p, cfg=cfg: w4a16_sync(x, p, None, fmt, cfg)  # noqa: E731
                try:
                    out = fn(copies[0])
                except Exception as e:  # a first run of an untried kernel: record and go on
                    row[f"{key}_error"] = repr(e)[:500]
                    print(f"{name} {fmt} M={M} {key}: {row[f'{key}_error']}", flush=True)
                    continue
                row[f"{key}_err_vs_reference"] = _rel(out, want)
                row[f"{key}_err_vs_exact"] = _rel(out, exact)
                row[f"{key}_us"] = 1e6 * time_graph([lambda p=p, fn=fn: fn(p) for p in copies])
                if best is None or row[f"{key}_us"] < row[f"{best}_us"]:
                    best = key
            rows.append(row)
            if best is None:
                continue
            row["best"], row["best_us"] = best, row[f"{best}_us"]
            table.append([f"{name} {fmt}", M, f"{row['op_us']:.2f} {row['op_kernel']}",
                          f"{row['op_off_us']:.2f} {row['op_off_kernel']}", row["bf16_us"], row["best_us"], best,
                          f"{row[f'{best}_err_vs_reference']:.1e}", f"{row[f'{best}_err_vs_exact']:.1e}",
                          f"{row['bf16_weights_err_vs_exact']:.1e}"])  # fmt: skip
            print(f"{name} {fmt} M={M}: qlinear {row['op_us']:.2f} us ({row['op_kernel']}), small_m off "
                  f"{row['op_off_us']:.2f} ({row['op_off_kernel']}), bf16 {row['bf16_us']:.2f}, "
                  f"sync {row['best_us']:.2f} ({best})", flush=True)  # fmt: skip
        del copies, bf16, w16
        # after each shape, so that a run cut short keeps what it measured
        write_json(f"{datetime.date.today().isoformat()}-w4a16-sync.json", {"rows": rows}, path=args.json)
        torch.cuda.empty_cache()
    print_table(
        "Llama-3-8B Q4_K_M shapes, bf16 x: the dispatched qlinear, bf16 cuBLAS and w4a16_sync (us)",
        ["shape", "M", "qlinear", "small_m off", "bf16", "sync", "config", "err vs ref", "err vs exact", "bf16 w err"],
        table,
    )


if __name__ == "__main__":
    main()
