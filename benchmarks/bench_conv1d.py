"""The conv1d rule on the GPU: a causal depthwise short conv + SiLU (Mamba / Qwen3.5 GatedDeltaNet
shapes: C channels, K taps, bf16, a [1, T, C] activation) compiled by stock Inductor and by
inductor_fuse, against eager.

    python benchmarks/bench_conv1d.py                          # C 8192, K 4, T 1 (decode) and 512
    python benchmarks/bench_conv1d.py --channels 4096 --lengths 1,64,512

T = 1 is the decode form (the conv state concatenated with the new token, an unpadded conv, the
state updated in place); T > 1 the prefill form (conv padding K - 1, then [..., :T]). Method (as
bench_kernels.py): enough activation copies to exceed 3x the L2, many calls captured in one CUDA
graph, median per call over graph replays; kernels per call from the profiler. Writes
conv1d_h200.json ($BENCH_JSON, or $OUT, or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_kernels import n_copies, time_graph  # noqa: E402
from common import count_cuda_kernels, environment, print_table, write_json  # noqa: E402

import inductor_fuse  # noqa: E402


class ShortConv(nn.Module):
    """silu(causal depthwise conv(x)) on x [1, T, C], as Mamba-style layers spell it."""

    def __init__(self, C: int, K: int):
        super().__init__()
        self.conv = nn.Conv1d(C, C, K, groups=C, padding=K - 1, bias=True)
        self.register_buffer("state", torch.zeros(1, C, K - 1))
        self.K = K

    def forward(self, x):
        T = x.shape[1]
        x = x.transpose(1, 2)
        if T == 1:  # decode: the conv state holds the last K - 1 inputs
            xs = torch.cat([self.state, x], -1)
            self.state.copy_(xs[:, :, 1:])
            y = F.conv1d(xs, self.conv.weight, self.conv.bias, groups=x.shape[1])
        else:
            y = self.conv(x)[..., :T]
        return F.silu(y).transpose(1, 2)


def bench(C: int, K: int, T: int, replays: int) -> list[dict]:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = ShortConv(C, K).to(dev, torch.bfloat16).eval()
    nbytes = T * C * 2
    xs = [torch.randn(1, T, C, device=dev, dtype=torch.bfloat16) for _ in range(min(n_copies(nbytes), 64))]
    systems = {
        "eager": model,
        "torch.compile": torch.compile(model, backend="inductor"),
        "inductor_fuse": torch.compile(model, backend="inductor_fuse"),
    }
    rows = []
    with torch.no_grad():
        state0 = model.state.clone()
        ref = model(xs[0])
        for name, fn in systems.items():
            model.state.copy_(state0)
            err = (fn(xs[0]).float() - ref.float()).abs().max().item()
            t = time_graph([lambda x=x, fn=fn: fn(x) for x in xs], replays=replays)
            kernels = count_cuda_kernels(lambda fn=fn: fn(xs[0]))
            fused = inductor_fuse.last_report().counts.get("conv1d", 0) if name == "inductor_fuse" else None
            rows.append(
                dict(C=C, K=K, T=T, system=name, us=t * 1e6, kernels=kernels, max_abs_err=err, conv1d_rewrites=fused)
            )
            print(f"C {C} K {K} T {T} {name}: {t * 1e6:.2f} us, {kernels} kernels", flush=True)
    for r in rows:
        r["vs_stock_compile"] = next(x["us"] for x in rows if x["system"] == "torch.compile") / r["us"]
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=8192)
    ap.add_argument("--taps", type=int, default=4)
    ap.add_argument("--lengths", default="1,512")
    ap.add_argument("--replays", type=int, default=7)
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"))
    args = ap.parse_args(argv)
    env = environment()
    print(f"{env['gpu']}  torch {env['torch']}  triton {env['triton']}", flush=True)
    rows = []
    for T in (int(t) for t in args.lengths.split(",")):
        rows += bench(args.channels, args.taps, T, args.replays)
    print_table(
        "causal depthwise conv1d + SiLU, bf16, us per call (CUDA graph)",
        ["C", "K", "T", "system", "us", "kernels", "x stock compile", "max |err| vs eager"],
        [
            [
                r["C"],
                r["K"],
                r["T"],
                r["system"],
                r["us"],
                r["kernels"],
                r["vs_stock_compile"],
                f"{r['max_abs_err']:.1e}",
            ]
            for r in rows
        ],
    )
    payload = {"method": "CUDA graph over rotated activation copies (> 3x L2), median of replays", "results": rows}
    write_json("conv1d_h200.json", payload, path=args.json)


if __name__ == "__main__":
    main()
