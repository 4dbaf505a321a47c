"""Host time of Dynamo's guard check for one compiled decode step (part of every token's cost).

    python benchmarks/bench_guards.py [--layers 18] [--fmt q8_0] [--device cpu]

Builds the project's Transformer with Gemma-3-270M's layer count and tensor layout (sizes are
tiny: the guards' cost depends on how many tensors there are, not how big), quantizes it,
compiles ``decode_one_token`` with the ``inductor_fuse`` backend, and times the cache entry's
guard check on the step's arguments (median of repeats) next to the whole step call. Run it
with ``PYTHONPATH=<another tree>`` to compare two versions of the backend.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

import inductor_fuse  # noqa: E402
from inductor_fuse.models.generate import decode_one_token  # noqa: E402
from inductor_fuse.models.transformer import ModelArgs, Transformer  # noqa: E402


def median_us(fn, n: int, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--fmt", default="q8_0")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    torch.manual_seed(0)
    margs = ModelArgs(vocab_size=256, dim=64, n_layers=args.layers, n_heads=4, n_kv_heads=1, head_dim=32,
                      intermediate_size=128, qk_norm=True, sandwich_norm=True, embed_scale=True, act="gelu_tanh",
                      tie_embeddings=True)
    model = Transformer(margs).eval()
    inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt=args.fmt))
    model.to(args.device).setup_caches(1, 64)
    n_tensors = len(list(model.parameters())) + len(list(model.buffers()))
    step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True)
    token, pos = torch.tensor([[3]], device=args.device), torch.tensor([5], device=args.device)
    with torch.no_grad():
        for _ in range(3):
            step(model, token, pos)
        (entry,) = _debug_get_cache_entry_list(decode_one_token.__code__)
        frame_locals = {"model": model, "token": token, "input_pos": pos, "temperature": 0.0, "top_k": None}
        assert entry.guard_manager.check(frame_locals)
        guard_us = median_us(lambda: entry.guard_manager.check(frame_locals), 2000)
        step_us = median_us(lambda: step(model, token, pos), 100)
    rows = [[args.device, args.layers, args.fmt, n_tensors, guard_us, step_us]]
    print_table("guard check of one decode step", ["device", "layers", "fmt", "tensors", "guard us", "step us"], rows)
    write_json("guards.json", {"layers": args.layers, "fmt": args.fmt, "device": args.device, "tensors": n_tensors,
                               "guard_check_us": guard_us, "step_call_us": step_us,
                               "report_notes": inductor_fuse.last_report().notes})


if __name__ == "__main__":
    main()
