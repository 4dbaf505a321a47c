"""Decode step of Llama-3-8B-shaped layers, bf16, M = 1: kernels per layer and time per layer,
``inductor_fuse`` vs stock ``torch.compile``, both with CUDA graphs (mode="reduce-overhead").

    python benchmarks/bench_layer.py [--layers 8] [--context 512]

Per-layer figures are differences between an L-layer and a 1-layer model, so the embedding,
final norm and (small) output projection cancel out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count_cuda_kernels, cuda_time_us, print_table, write_json  # noqa: E402

from inductor_fuse.models.transformer import ModelArgs, Transformer  # noqa: E402

LLAMA3_8B = dict(dim=4096, n_heads=32, n_kv_heads=8, head_dim=128, intermediate_size=14336, rope_base=500000.0)


def build(n_layers: int, context: int) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=256, n_layers=n_layers, **LLAMA3_8B)
    with torch.device("cuda"):
        model = Transformer(args).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.setup_caches(1, context + 64, torch.bfloat16)
    return model


def step_fn(model, backend: str | None, mode: str | None, pos: int):
    tokens = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    input_pos = torch.tensor([pos], device="cuda")
    torch._dynamo.reset()
    fn = model if backend is None else torch.compile(model, backend=backend, mode=mode)
    return lambda: fn(tokens, input_pos)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()
    import inductor_fuse

    systems = {"eager": (None, None), "torch.compile": ("inductor", None), "inductor_fuse": ("inductor_fuse", None)}
    results = {}
    for name, (backend, _) in systems.items():
        small, big = build(1, args.context), build(args.layers, args.context)
        # kernel count: compiled without CUDA graphs so the profiler sees each launch
        k1 = count_cuda_kernels(step_fn(small, backend, None, args.context))
        kL = count_cuda_kernels(step_fn(big, backend, None, args.context))
        mode = None if backend is None else "reduce-overhead"
        t1 = cuda_time_us(step_fn(small, backend, mode, args.context))
        tL = cuda_time_us(step_fn(big, backend, mode, args.context))
        per_layer_kernels = (kL - k1) / (args.layers - 1)
        per_layer_us = (tL - t1) / (args.layers - 1)
        results[name] = {
            "kernels_per_layer": per_layer_kernels,
            "us_per_layer": per_layer_us,
            "step_us": tL,
            "cuda_graphs": mode == "reduce-overhead",
        }
        if backend == "inductor_fuse":
            results[name]["fusion_report"] = inductor_fuse.last_report().summary()
        del small, big
        torch.cuda.empty_cache()

    base = results["torch.compile"]["us_per_layer"]
    rows = [
        [n, r["kernels_per_layer"], r["us_per_layer"], r["step_us"], base / r["us_per_layer"]]
        for n, r in results.items()
    ]
    print_table(
        f"Llama-3-8B layer, bf16, M=1, context {args.context}, {args.layers} layers (CUDA graphs for compiled)",
        ["system", "kernels/layer", "us/layer", f"step us ({args.layers} layers)", "speed-up vs torch.compile"],
        rows,
    )
    print(results["inductor_fuse"]["fusion_report"])
    write_json("layer_h200.json", {"config": vars(args), "results": results})


if __name__ == "__main__":
    main()
