"""Decode step of Llama-3-8B-shaped layers, M = 1: kernels per layer and time per layer,
``inductor_fuse`` vs stock ``torch.compile``, both with CUDA graphs (mode="reduce-overhead").

    python benchmarks/bench_layer.py [--layers 8] [--context 512] [--quant q4_k]

--quant q4_k: every linear quantized (`inductor_fuse.quantize_`, random weights), so stock
torch.compile runs the same qlinear ops; "inductor_fuse, rules off" is the backend with every rule
family disabled (freezing, the ops as extern calls): the before of the rules, on the same weights.

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


def build(n_layers: int, context: int, quant: str = "none") -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=256, n_layers=n_layers, **LLAMA3_8B)
    with torch.device("cuda"):
        model = Transformer(args).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    if quant != "none":
        import inductor_fuse

        inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt=quant))
    model.setup_caches(1, context + 64, torch.bfloat16)
    return model


def step_fn(model, backend: str | None, mode: str | None, pos: int, options: dict | None = None):
    tokens = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    input_pos = torch.tensor([pos], device="cuda")
    torch._dynamo.reset()
    if backend is None:
        fn = model
    elif options:  # torch.compile takes a mode or options, not both: the backend binds both
        import inductor_fuse

        fn = torch.compile(model, backend=inductor_fuse.make_backend(mode=mode, **options))
    else:
        fn = torch.compile(model, backend=backend, mode=mode)
    return lambda: fn(tokens, input_pos)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--quant", default="none", choices=["none", "q4_k", "q6_k", "q4_0"], help="weight format")
    args = ap.parse_args()
    import inductor_fuse

    off = {name: False for name in inductor_fuse.FAMILIES}
    systems = {
        "eager": (None, None),
        "torch.compile": ("inductor", None),
        "inductor_fuse, rules off": ("inductor_fuse", off),
        "inductor_fuse": ("inductor_fuse", None),
    }
    results = {}
    for name, (backend, options) in systems.items():
        small, big = build(1, args.context, args.quant), build(args.layers, args.context, args.quant)
        # kernel count: compiled without CUDA graphs so the profiler sees each launch
        k1 = count_cuda_kernels(step_fn(small, backend, None, args.context, options))
        kL = count_cuda_kernels(step_fn(big, backend, None, args.context, options))
        mode = None if backend is None else "reduce-overhead"
        t1 = cuda_time_us(step_fn(small, backend, mode, args.context, options))
        tL = cuda_time_us(step_fn(big, backend, mode, args.context, options))
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
            results[name]["counts"] = inductor_fuse.last_report().counts
        del small, big
        torch.cuda.empty_cache()

    base = results["torch.compile"]["us_per_layer"]
    rows = [
        [n, r["kernels_per_layer"], r["us_per_layer"], r["step_us"], base / r["us_per_layer"]]
        for n, r in results.items()
    ]
    print_table(
        f"Llama-3-8B layer, {'bf16' if args.quant == 'none' else args.quant} weights, M=1, context {args.context},"
        f" {args.layers} layers (CUDA graphs for compiled)",
        ["system", "kernels/layer", "us/layer", f"step us ({args.layers} layers)", "speed-up vs torch.compile"],
        rows,
    )
    print(results["inductor_fuse"]["fusion_report"])
    write_json(
        "layer_h200.json" if args.quant == "none" else f"layer_{args.quant}_h200.json",
        {"config": vars(args), "results": results},
    )


if __name__ == "__main__":
    main()
