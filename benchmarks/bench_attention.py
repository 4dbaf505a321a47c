"""Decode attention benchmark: torch.ops.inductor_fuse.decode_attention against stock
F.scaled_dot_product_attention on the same masked call over a static KV cache.

Llama-3-8B decode shapes: Hq 32, Hkv 8, D 128, bf16, B 1, S 1. A cache of --buffer positions
(32768) with the first `live` positions live (the mask row of the token at position live - 1),
for each live length in --lives, plus a --short-buffer cache (1024) with every position live.
Stock SDPA is called as the model calls it:
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=D**-0.5, enable_gqa=True)

Method (as benchmarks/bench_kernels.py): rotate enough cache copies that their live bytes exceed
3x the L2, capture many calls in one CUDA graph, time graph replays with CUDA events, median per
call. GB/s counts the live K and V bytes (what the op must read) over our time, against the
measured device copy bandwidth. max |ours - SDPA| is taken outside the graph on one copy.

    python benchmarks/bench_attention.py                       # table + JSON
    python benchmarks/bench_attention.py --lives 1024,32768    # fewer cases
    python benchmarks/bench_attention.py --sweep               # every launch plan, 1k and 32k live

JSON: $BENCH_JSON (a path) or --json, else attention_h200.json in $OUT or benchmarks/results/.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_kernels import copy_bandwidth, n_copies, time_graph  # noqa: E402
from common import environment, print_table, write_json  # noqa: E402

import inductor_fuse.attention  # noqa: E402,F401 -- defines the op
from inductor_fuse.kernels import decode_attention as kernel  # noqa: E402 -- its CUDA implementation

HQ, HKV, D = 32, 8, 128  # Llama-3-8B
MAX_COPIES = 64


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buffer", type=int, default=32768, help="KV cache positions (max_seq_len)")
    ap.add_argument("--lives", default="512,1024,4096,16384,32768", help="live lengths in the long buffer")
    ap.add_argument("--short-buffer", type=int, default=1024, help="a short cache, every position live (0: none)")
    ap.add_argument("--replays", type=int, default=7, help="timed graph replays (median)")
    ap.add_argument("--sweep", action="store_true", help="time launch plans (tile, warps, stages, splits) instead")
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"), help="output path (default: $BENCH_JSON)")
    args = ap.parse_args(argv)
    args.lives = [int(x) for x in args.lives.split(",")]
    if any(not 0 < L <= args.buffer for L in args.lives):
        ap.error(f"--lives must lie in 1..{args.buffer}, got {args.lives}")
    if args.short_buffer < 0:
        ap.error("--short-buffer must be >= 0")
    return args


def cases(args) -> list[tuple[int, int]]:
    """(buffer, live) pairs."""
    out = [(args.buffer, L) for L in args.lives]
    if args.short_buffer:
        out.append((args.short_buffer, args.short_buffer))
    return out


def bench_case(T: int, live: int, replays: int, copy_gbs: float) -> dict:
    dev = torch.device("cuda")
    scale = D**-0.5
    live_bytes = 2 * HKV * live * D * 2  # K and V, bf16
    q = torch.randn(1, HQ, 1, D, device=dev, dtype=torch.bfloat16)
    caches = [
        (
            torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16),
            torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16),
        )
        for _ in range(min(n_copies(live_bytes), MAX_COPIES))
    ]
    mask = (torch.arange(T, device=dev) < live)[None, None, None, :]  # [1, 1, 1, T]
    op = torch.ops.inductor_fuse.decode_attention

    def ours(k, v):
        return op(q, k, v, mask, scale, 0.0)

    def sdpa(k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)

    k0, v0 = caches[0]
    err = (ours(k0, v0).float() - sdpa(k0, v0).float()).abs().max().item()
    t_ours = time_graph([lambda k=k, v=v: ours(k, v) for k, v in caches], replays=replays)
    t_sdpa = time_graph([lambda k=k, v=v: sdpa(k, v) for k, v in caches], replays=replays)
    n_sms = torch.cuda.get_device_properties(dev).multi_processor_count
    splits = kernel.plan(1, HQ, HKV, 1, D, T, n_sms, mask_rows=False).num_splits
    del caches
    torch.cuda.empty_cache()
    gbs = live_bytes / t_ours / 1e9
    return {
        "buffer": T,
        "live": live,
        "num_splits": splits,
        "ours_us": t_ours * 1e6,
        "sdpa_us": t_sdpa * 1e6,
        "speedup": t_sdpa / t_ours,
        "ours_live_gbs": gbs,
        "ours_pct_copy_bw": 100 * gbs / copy_gbs,
        "max_abs_err_vs_sdpa": err,
    }


def sweep(T: int, lives: list[int], replays: int) -> list[dict]:
    """The op under forced launch plans: BLOCK_T x num_warps x num_stages x splits, per live length."""
    dev = torch.device("cuda")
    q = torch.randn(1, HQ, 1, D, device=dev, dtype=torch.bfloat16)
    caches = [
        (
            torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16),
            torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16),
        )
        for _ in range(3)  # 3 x 2 x 64 MiB at 32k: more than the L2
    ]
    op, scale, default_plan, rows = torch.ops.inductor_fuse.decode_attention, D**-0.5, kernel.plan, []
    try:
        for live in lives:
            mask = (torch.arange(T, device=dev) < live)[None, None, None, :]
            ref = F.scaled_dot_product_attention(q, *caches[0], attn_mask=mask, scale=scale, enable_gqa=True)
            for bt, nw, ns, sp in itertools.product((64, 128), (4, 8), (2, 3), (16, 33, 66)):
                tiles = triton.next_power_of_2(triton.cdiv(triton.cdiv(T, bt), sp))
                p = kernel.Plan(16, 1, bt, tiles, sp, nw, ns)  # block_r, row_blocks: G * S = 4 rows
                kernel.plan = lambda *a, p=p: p
                err = (op(q, *caches[0], mask, scale, 0.0).float() - ref.float()).abs().max().item()
                t = time_graph([lambda k=k, v=v: op(q, k, v, mask, scale, 0.0) for k, v in caches], replays=replays)
                rows.append(
                    dict(
                        live=live,
                        block_t=bt,
                        num_warps=nw,
                        num_stages=ns,
                        num_splits=sp,
                        us=t * 1e6,
                        err=err,
                    )
                )
                print(
                    f"live {live} block_t {bt} warps {nw} stages {ns} splits {sp}: {t * 1e6:.1f} us",
                    flush=True,
                )
    finally:
        kernel.plan = default_plan
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    env = environment()
    bw = copy_bandwidth(torch.device("cuda"))
    print(f"{env['gpu']}  torch {env['torch']}  triton {env['triton']}  copy bandwidth {bw:.0f} GB/s", flush=True)
    if args.sweep:
        rows = sweep(args.buffer, [1024, args.buffer], args.replays)
        for live in sorted({r["live"] for r in rows}):
            best = sorted((r for r in rows if r["live"] == live), key=lambda r: r["us"])[:5]
            print(f"best at live {live}:", *(f"{r['us']:.1f} us {r}" for r in best), sep="\n  ")
        write_json("attention_sweep_h200.json", {"buffer": args.buffer, "sweep": rows}, path=args.json)
        return
    rows = []
    for T, live in cases(args):
        r = bench_case(T, live, args.replays, bw)
        rows.append(r)
        print(f"buffer {T:6d} live {live:6d}: ours {r['ours_us']:8.1f} us  sdpa {r['sdpa_us']:8.1f} us", flush=True)
    print_table(
        f"decode attention, Llama-3-8B (Hq {HQ}, Hkv {HKV}, D {D}, bf16, B 1, S 1), us per call (CUDA graph)",
        ["buffer", "live", "splits", "ours us", "SDPA us", "speedup", "ours GB/s", "% copy bw", "max |err|"],
        [
            [
                r["buffer"],
                r["live"],
                r["num_splits"],
                r["ours_us"],
                r["sdpa_us"],
                r["speedup"],
                r["ours_live_gbs"],
                r["ours_pct_copy_bw"],
                f"{r['max_abs_err_vs_sdpa']:.1e}",
            ]
            for r in rows
        ],
    )
    payload = {
        "method": "CUDA graph of many calls over rotated KV cache copies (live bytes > 3x 50 MB L2), median of replays",
        "shape": {"Hq": HQ, "Hkv": HKV, "D": D, "dtype": "bfloat16", "B": 1, "S": 1},
        "copy_gbs": bw,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "results": rows,
    }
    write_json("attention_h200.json", payload, path=args.json)


if __name__ == "__main__":
    main()
