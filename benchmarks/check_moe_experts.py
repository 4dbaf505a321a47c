"""Is a compiled transformers MoE right and deterministic? Eager against compiled against compiled again.

    python benchmarks/check_moe_experts.py                          # stock Inductor, grouped_mm experts
    python benchmarks/check_moe_experts.py --experts eager --backend inductor_fuse --models 3

Builds tiny random Mixtral models (tests/hf_models.py, seeded, decisive routers) and compiles each
with `torch.compile(model, backend=...)` in this one process (no Dynamo reset, as a user compiles),
then prints per model: the logits' rel. err against eager, and of a second call against the first.
On an H200 with torch 2.11 and transformers 5.17, stock Inductor with the grouped_mm experts path
gave 0.04-0.18 and non-zero repeats, the eager experts path 0.0065 and 0 (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hf_models import FAMILIES, build, input_ids  # noqa: E402
from numerics import rel_err  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, inductor_fuse)")
    ap.add_argument("--experts", default=None, help="experts_implementation (default: transformers' choice)")
    ap.add_argument("--family", default="mixtral", help="an MoE family of tests/hf_models.py")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--models", type=int, default=3, help="models compiled one after another")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    family = next(f for f in FAMILIES if f.name == args.family)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    ids = input_ids(device=args.device)
    for n in range(args.models):
        model = build(family, hidden=args.hidden, dtype=dtype, device=args.device, experts=args.experts)
        compiled = torch.compile(model, backend=args.backend)
        with torch.no_grad():
            want = model(ids, use_cache=False).logits.float()
            got = compiled(ids, use_cache=False).logits.float()
            again = compiled(ids, use_cache=False).logits.float()
        print(
            f"model {n}: {args.family} h{args.hidden} {dtype} experts={model.config._experts_implementation} "
            f"backend={args.backend}: compiled vs eager {rel_err(got, want):.3e}, "
            f"again vs compiled {rel_err(again, got):.3e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
