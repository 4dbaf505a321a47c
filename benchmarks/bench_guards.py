"""What the backend's weight guards cost a decode step, measured in one process.

    python benchmarks/bench_guards.py                            # tiny model, Gemma-3-270M's layout
    python benchmarks/bench_guards.py --gguf model.gguf --tokens 512 --rounds 5

The backend guards every weight it bakes into the compiled code with an ID_MATCH guard
(``backend.py``), which Dynamo checks before every call, so it is part of every token's host
time. This benchmark compiles ``decode_one_token`` once per guard set, in one process:

    identity   what the backend installs
    none       no weight guards (unsafe: a second model would run with the first one's
               weights; here only to measure what the guards cost)

and then, on the same loaded model, alternates generation runs of the variants (the order rotates
each round, so drift hits all alike): decode tok/s as ``examples/decode.py`` measures it (host
read of each token), the time of one compiled step call, and the time of Dynamo's guard check
alone. Prints a table and writes ``<date>-guards.json`` to ``$OUT`` or ``benchmarks/results/``.

``benchmarks/results/2026-12-01-guards-version-guards.json`` has a third variant, measured at commit
133c39b when the backend guarded each frozen tensor's version counter too: that cost Gemma-3-270M
decode 16% on an H200, and the version guards were dropped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, print_table, write_json

import inductor_fuse
from inductor_fuse import backend
from inductor_fuse.gguf import load_gguf
from inductor_fuse.models.generate import decode_one_token, generate
from inductor_fuse.models.transformer import ModelArgs, Transformer

VARIANTS = ("identity", "none")


def guard_patches(variant: str) -> list:
    if variant == "none":
        return [mock.patch.object(backend, "install_guard", lambda *a, **k: None)]
    return []


def tiny_model(device: str, n_layers: int, fmt: str) -> tuple[Transformer, list[int]]:
    """Gemma-3-270M's layer count and tensor layout at tiny sizes: the guards' cost depends on how
    many tensors there are, not on how big they are."""
    torch.manual_seed(0)
    margs = ModelArgs(
        vocab_size=256, dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=1, head_dim=32, intermediate_size=128,
        qk_norm=True, sandwich_norm=True, embed_scale=True, act="gelu_tanh", tie_embeddings=True,
    )  # fmt: skip
    model = Transformer(margs).eval()
    inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt=fmt))
    model.to(device).setup_caches(1, 1024)
    return model, [3, 17, 42, 7]


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
    p.add_argument("--gguf", help="a GGUF model (default: a tiny model with Gemma-3-270M's layout)")
    p.add_argument("--layers", type=int, default=18, help="tiny model: layer count")
    p.add_argument("--fmt", default="q8_0", help="tiny model: weight format")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=512, help="tokens per timed generation")
    p.add_argument("--rounds", type=int, default=5, help="timed generations per variant")
    p.add_argument("--prompt", default="The capital of France is")
    args = p.parse_args()

    if args.gguf:
        model, tokenizer = load_gguf(args.gguf, device=args.device, max_seq_len=args.tokens + 64)
        prompt = tokenizer.encode(args.prompt)
        name = Path(args.gguf).name
    else:
        model, prompt = tiny_model(args.device, args.layers, args.fmt)
        name = f"tiny {args.layers}-layer {args.fmt}"
    n_tensors = len(list(model.parameters())) + len(list(model.buffers()))
    mode = "reduce-overhead" if args.device == "cuda" else None
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    steps, notes = {}, {}
    with torch.no_grad():
        for v in VARIANTS:
            # a distinct code object per variant: Dynamo keeps one cache (and guard set) per code object
            code = decode_one_token.__code__.replace(co_name=f"decode_one_token_{v.replace('+', '_')}")
            fn = types.FunctionType(code, decode_one_token.__globals__, code.co_name, decode_one_token.__defaults__)
            step = torch.compile(fn, backend=inductor_fuse.make_backend(mode=mode), fullgraph=True)
            inductor_fuse.clear_reports()
            with ExitStack() as stack:
                for patch in guard_patches(v):
                    stack.enter_context(patch)
                generate(model, prompt, 9, decode_fn=step)  # compiles, records the CUDA graph
            sync()
            steps[v] = (fn, step)
            notes[v] = [n.split(";")[0] for r in inductor_fuse.all_reports() for n in r.notes if "guard" in n]
            if v == "none":
                notes[v].append("install_guard patched out: no weight guard installed")

        results: dict[str, dict[str, list]] = {v: {"decode_tok_s": [], "tokens": []} for v in VARIANTS}
        for r in range(args.rounds):
            for v in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
                times: list[float] = []
                tokens = generate(model, prompt, args.tokens, decode_fn=steps[v][1],
                                  on_token=lambda _t: times.append(time.perf_counter()))  # fmt: skip
                results[v]["decode_tok_s"].append((len(tokens) - 1) / (times[-1] - times[0]))
                results[v]["tokens"].append(tokens)

        device = model.norm.weight.device
        token, pos = torch.tensor([[3]], device=device), torch.tensor([len(prompt)], device=device)
        for v, (fn, step) in steps.items():
            (entry,) = _debug_get_cache_entry_list(fn.__code__)
            frame = {"model": model, "token": token, "input_pos": pos, "temperature": 0.0, "top_k": None}
            assert entry.guard_manager.check(frame), f"{v}: the guards reject the step's own arguments"
            results[v]["guard_check_us"] = median_us(lambda e=entry, f=frame: e.guard_manager.check(f), 2000)

            def call(step=step):
                step(model, token.clone(), pos)
                sync()

            results[v]["step_call_us"] = median_us(call, 200)

    rows, summary = [], {}
    for v in VARIANTS:
        tok_s = results[v]["decode_tok_s"]
        med = statistics.median(tok_s)
        summary[v] = {
            "median_decode_tok_s": med,
            "min": min(tok_s),
            "max": max(tok_s),
            "guard_check_us": results[v]["guard_check_us"],
            "step_call_us": results[v]["step_call_us"],
            "guards": notes[v],
        }
        rows.append([v, med, min(tok_s), max(tok_s), results[v]["guard_check_us"], results[v]["step_call_us"]])
    same = len({tuple(t) for v in VARIANTS for t in results[v]["tokens"]}) == 1
    print_table(
        f"{name} on {args.device}: {n_tensors} tensors, {args.tokens} tokens x {args.rounds} rounds per variant",
        ["guards", "decode tok/s (median)", "min", "max", "guard check us", "step call us"],
        rows,
    )
    for v in VARIANTS:
        print(f"{v:>18}: {'; '.join(notes[v]) or '-'}")
    print(f"identical tokens in every run: {same}")
    write_json(
        f"{environment()['date']}-guards{'' if args.gguf else '-tiny'}.json",
        {"model": name, "device": args.device, "tensors": n_tensors, "tokens": args.tokens, "rounds": args.rounds,
         "summary": summary, "decode_tok_s": {v: results[v]["decode_tok_s"] for v in VARIANTS},
         "identical_tokens": same},
    )  # fmt: skip


if __name__ == "__main__":
    main()
