"""The glu rule's kernel on the GPU: torch.ops.inductor_fuse.glu_qlinear (one W4A8 matvec over
interleaved gate|up rows, act(gate) * up in its epilogue) against what runs without the rule: the
gate|up matmul as one qlinear over concatenated planes (the siblings rule's output), then act * mul
as a separate kernel (stock Inductor's one fused pointwise kernel).

    python benchmarks/bench_glu.py                       # Llama-3-8B / 3.2-1B / Gemma-3-270M MLPs, Q4_K, M 1 and 4
    python benchmarks/bench_glu.py --formats q4_k,q6_k --ms 1,2,4
    python benchmarks/bench_glu.py --formats bf16 --ms 1,4,16,64   # float: glu_linear against cuBLAS + act*mul

Method (as bench_kernels.py): random planes of the format, enough weight copies to exceed 3x the
L2, many calls captured in one CUDA graph, median per call over graph replays. Writes
glu_h200.json ($BENCH_JSON or --json, else $OUT or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_kernels import n_copies, plane_bytes, time_graph  # noqa: E402
from common import environment, print_table, write_json  # noqa: E402

import inductor_fuse  # noqa: E402,F401 -- the ops and their CUDA implementations
from inductor_fuse.kernels.testing import random_planes  # noqa: E402
from inductor_fuse.quant.formats import FORMATS  # noqa: E402

MLPS = {  # name: (intermediate, hidden)
    "llama3-8b": (14336, 4096),
    "llama3-1b": (8192, 2048),
    "gemma3-270m": (2048, 640),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlps", default=",".join(MLPS), help=f"from {list(MLPS)}")
    ap.add_argument("--formats", default="q4_k")
    ap.add_argument("--ms", default="1,4", help="activation rows (decode batch)")
    ap.add_argument("--act", default="silu", choices=["silu", "gelu_tanh"])
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"), help="output path (default: $BENCH_JSON)")
    args = ap.parse_args(argv)
    args.mlps = args.mlps.split(",")
    args.formats = args.formats.split(",")
    args.ms = [int(m) for m in args.ms.split(",")]
    return args


def interleave(gate: list[torch.Tensor], up: list[torch.Tensor]) -> list[torch.Tensor]:
    """Row i of gate and of up at rows 2i, 2i + 1 of each plane (as the glu rule arranges them)."""
    return [torch.stack([g, u], dim=1).reshape(2 * g.shape[0], *g.shape[1:]) for g, u in zip(gate, up)]


def random_weights(fmt: str, N: int, K: int, dev, seed: int) -> list[torch.Tensor]:
    """The planes of a random quantized [N, K] weight, or ([N, K] bf16,) for fmt "bf16"."""
    if fmt == "bf16":
        g = torch.Generator(device=dev).manual_seed(seed)
        return [(torch.randn(N, K, generator=g, device=dev) / K**0.5).to(torch.bfloat16)]
    return random_planes(fmt, N, K, dev, seed=seed)


def bench_case(mlp: str, fmt: str, M: int, act: str) -> dict:
    inter, hidden = MLPS[mlp]
    dev = torch.device("cuda")
    x = torch.randn(M, hidden, device=dev, dtype=torch.bfloat16)
    one = random_weights(fmt, 2 * inter, hidden, dev, seed=0)
    copies = []
    for i in range(n_copies(plane_bytes(one))):
        gate = random_weights(fmt, inter, hidden, dev, seed=2 * i + 1)
        up = random_weights(fmt, inter, hidden, dev, seed=2 * i + 2)
        copies.append((interleave(gate, up), [torch.cat([g, u]) for g, u in zip(gate, up)]))
    del one
    if fmt == "bf16":  # glu_linear against cuBLAS over the concatenated weight (siblings' output)

        def qlinear(x, planes, bias, fmt):
            return F.linear(x, planes[0])

        def glu_qlinear(x, planes, bias, fmt, act):
            return torch.ops.inductor_fuse.glu_linear(x, planes[0], None, act)

    else:
        qlinear, glu_qlinear = torch.ops.inductor_fuse.qlinear, torch.ops.inductor_fuse.glu_qlinear
    gelu = act == "gelu_tanh"

    @torch.compile(fullgraph=True)  # stock Inductor: one pointwise kernel
    def act_mul(y):
        g, u = y.float().split(inter, dim=-1)
        a = F.gelu(g, approximate="tanh") if gelu else F.silu(g)
        return (a * u).to(y.dtype)

    def fused(planes):
        return glu_qlinear(x, planes, None, fmt, act)

    def unfused(planes):
        return act_mul(qlinear(x, planes, None, fmt))

    p_int, p_cat = copies[0]
    y_f, y_u = fused(p_int).float(), unfused(p_cat).float()
    err = ((y_f - y_u).abs().max() / y_u.abs().max()).item()
    t_f = time_graph([lambda p=p: fused(p[0]) for p in copies])
    t_u = time_graph([lambda p=p: unfused(p[1]) for p in copies])
    del copies
    torch.cuda.empty_cache()
    return {
        "mlp": mlp,
        "intermediate": inter,
        "hidden": hidden,
        "fmt": fmt,
        "M": M,
        "act": act,
        "glu_us": t_f * 1e6,
        "matmul_then_act_mul_us": t_u * 1e6,
        "speedup": t_u / t_f,
        "max_rel_err": err,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    env = environment()
    print(f"{env['gpu']}  torch {env['torch']}  triton {env['triton']}", flush=True)
    rows = []
    for mlp in args.mlps:
        for fmt in args.formats:
            if fmt != "bf16" and MLPS[mlp][1] % FORMATS[fmt].block_size:
                print(f"{mlp} {fmt}: skipped, hidden size {MLPS[mlp][1]} is not a multiple of the format's block")
                continue
            for M in args.ms:
                r = bench_case(mlp, fmt, M, args.act)
                rows.append(r)
                print(f"{mlp} {fmt} M {M}: glu {r['glu_us']:.1f} us, unfused {r['matmul_then_act_mul_us']:.1f} us")
    print_table(
        f"GLU ({args.act}(gate) * up, bf16 activations), us per call (CUDA graph)",
        ["mlp", "I x K", "fmt", "M", "glu op us", "matmul + act*mul us", "speedup", "max rel err"],
        [
            [
                r["mlp"],
                f"{r['intermediate']}x{r['hidden']}",
                r["fmt"],
                r["M"],
                r["glu_us"],
                r["matmul_then_act_mul_us"],
                r["speedup"],
                f"{r['max_rel_err']:.1e}",
            ]
            for r in rows
        ],
    )
    write_json(
        "glu_h200.json", {"method": "CUDA graph over rotated weight copies, median", "results": rows}, path=args.json
    )


if __name__ == "__main__":
    main()
