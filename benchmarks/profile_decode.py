"""Where a decoded token's time goes: the GPU kernels of one compiled decode step, per token.

    python benchmarks/profile_decode.py                               # Llama-3-8B Q4_K_M shapes, ctx 512
    python benchmarks/profile_decode.py --models llama3-8b-q4_k_m --configs default,act_quant
    python benchmarks/profile_decode.py --models gemma3-270m-q4_k_m --contexts 512

Loads the model as `bench_decode.py` does (same files, same compiled step with CUDA graphs), times
the decode of `--tokens` tokens with the host reading each token (as bench_decode), then records the
same run under torch.profiler and sums the device time of each kernel. Per token it prints: each
kernel kind (matvec per format, attention, norm, act_quant, Inductor's fused kernels ...) with its
launches and microseconds, the sum of kernel time against the wall time (the rest is gaps: launch
latency inside the CUDA graph and the host's read of each token), and the byte floor: the bytes a
token must read (the quantized weights and the live KV cache) over the measured copy bandwidth.
With programmatic dependent launch a kernel starts, and waits, while the one before it runs, so
those device times overlap and add up to more than the wall time. A second table (`timeline`)
splits the GPU's timeline itself: each kernel is charged only the time it adds past the end of
the kernels before it, grouped by role (kernel, grid, and the kind of kernel before it: a Llama
layer's q|k|v, o, gate|up and down matvecs differ by those), plus the gaps where nothing ran.
`--configs` names the rule families switched off per configuration (`default`: none;
`act_quant`: the act_quant family off; `act_quant+glu`: both). `--prefill N` profiles the compiled
prefill of an N-token prompt instead (`compile_prefill`, as examples/decode.py runs it on a GPU):
per prompt, the same table, against the wall time of the prefill. JSON:
`benchmarks/results/<date>-profile.json` (or $OUT).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import model_path, timed_generate  # noqa: E402
from common import RESULTS_DIR, environment, print_table  # noqa: E402

from inductor_fuse.backend import make_backend  # noqa: E402
from inductor_fuse.gguf import load_gguf  # noqa: E402
from inductor_fuse.models.generate import compile_prefill, decode_one_token, settled_gc  # noqa: E402

# kernel name -> kind (first match wins); names are Triton function names or Inductor's triton_*
KINDS = (
    ("inductor reduction", re.compile(r"^triton_(red|per)_")),  # Inductor's own kernels first: their
    ("inductor pointwise", re.compile(r"^triton_poi_")),  # names list the ops fused (qlinear, ...)
    ("attention", re.compile(r"decode_attention|^_split_kernel|^_merge_kernel|_attn|flash|sdpa|softmax", re.I)),
    ("rmsnorm+act_quant", re.compile(r"rmsnorm_quantize")),
    ("qk-norm+rope+cache write", re.compile(r"^_rope_cache")),
    ("act_quant", re.compile(r"act_quant")),
    ("matvec", re.compile(r"matvec|splitk|gemv|qlinear", re.I)),
    ("conv1d", re.compile(r"conv1d")),
    ("copy / fill", re.compile(r"memcpy|memset|copy|fill", re.I)),
)


def kind_of(name: str) -> str:
    return next((k for k, pat in KINDS if pat.search(name)), "other")


def timeline(events: list[dict], steps: int) -> dict:
    """The GPU timeline of `steps` decode steps split among the kernels that ran. `events`: the GPU
    events of one stream as a Chrome trace has them (`name`, `ts` and `dur` in microseconds,
    `args.grid`). Each kernel is charged its exclusive time, from the later of its start and the end
    of every event before it to its own end: under PDL a kernel starts and waits while the one
    before it still runs, and that overlap counts once, to the earlier kernel. Where the stream
    idles between two events it is a gap, charged to the role of the event after it (`idle_before`).
    Exclusive times and gaps add up to the span, first start to last end. Roles: (name, grid, kind
    of the event before), per token, the largest exclusive + idle time first."""
    events = sorted(events, key=lambda e: e["ts"])
    roles: dict[tuple, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    gaps = 0.0
    first = float(events[0]["ts"]) if events else 0.0
    done, before = first, "(start)"  # done: the end of every event so far
    for e in events:
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        idle = max(0.0, start - done)
        excl = max(0.0, end - max(start, done))
        gaps += idle
        grid = "x".join(str(g) for g in (e.get("args") or {}).get("grid", ()) if g != 1) or "1"
        r = roles[(e["name"], grid, before)]
        r[0] += 1
        r[1] += excl
        r[2] += end - start
        r[3] += idle
        done = max(done, end)
        before = kind_of(e["name"])
    span = done - first
    rows = [
        {"name": n, "kind": kind_of(n), "grid": g, "after": b, "launches_per_token": c / steps,
         "exclusive_us_per_token": x / steps, "device_us_per_launch": d / c, "idle_before_us_per_token": i / steps}
        for (n, g, b), (c, x, d, i) in roles.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: -(r["exclusive_us_per_token"] + r["idle_before_us_per_token"]))
    return {"span_us_per_token": span / steps, "gap_us_per_token": gaps / steps, "roles": rows}


def trace_events(prof) -> list[dict]:
    """The GPU events (kernels, copies, sets) of the stream that ran the most of them, from the
    profiler's Chrome trace."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    streams = collections.Counter((e.get("args") or {}).get("stream") for e in gpu)
    main = streams.most_common(1)[0][0] if streams else None
    return [e for e in gpu if (e.get("args") or {}).get("stream") == main]


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), 1 GiB, median of 10."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times = sorted(times[2:])
    return 2 * a.numel() / times[len(times) // 2]


def token_bytes(model, ctx: int) -> int:
    """Bytes one decoded token must read: every parameter and buffer but the embedding table (one
    row of it) and the KV cache (ctx positions of each layer's K and V)."""
    emb = model.tok_embeddings.weight
    caches = [b for layer in model.layers for b in (layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache)]
    skip = {id(emb), *map(id, caches)}
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if id(t) not in skip)
    total += emb.shape[-1] * emb.element_size()
    total += sum(b.numel() // b.shape[-2] * b.element_size() * ctx for b in caches)  # [B, H, max_seq_len, hd]
    return total


def profile_config(model, off: list[str], ctx: int, tokens: int) -> dict:
    backend = make_backend("reduce-overhead", **{f: False for f in off})
    step = torch.compile(decode_one_token, backend=backend, fullgraph=True)
    timed_generate(model, step, ctx, 8)  # compile and warm up
    timed_generate(model, step, ctx, 8)
    with settled_gc():  # as examples/decode.py and bench_decode.py time their decode
        walls = sorted(timed_generate(model, step, ctx, tokens) for _ in range(3))
        tok_s = walls[1]
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            timed_generate(model, step, ctx, tokens)
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_name[e.name].append(e.device_time if hasattr(e, "device_time") else e.cuda_time)
    steps = tokens - 1  # the first token comes from the prefill stand-in: `tokens` - 1 decode steps run
    kernels = [
        {"name": n, "kind": kind_of(n), "launches_per_token": len(ts) / steps, "us_per_token": sum(ts) / steps}
        for n, ts in per_name.items()
    ]
    kernels.sort(key=lambda k: -k["us_per_token"])
    line = timeline(trace_events(prof), steps)
    del step
    torch._dynamo.reset()  # the next configuration compiles decode_one_token afresh
    return {
        "families_off": off,
        "decode_steps": steps,
        "decode_tok_s": tok_s,
        "decode_min": walls[0],
        "decode_max": walls[-1],
        "kernels": kernels,
        "timeline": line,
    }


def profile_prefill(model, off: list[str], n: int) -> dict:
    """The compiled prefill of an n-token prompt: its wall time (median of 5) and its kernels."""
    fn = compile_prefill(make_backend(None, **{f: False for f in off}))
    prompt = torch.randint(2, min(1000, model.args.vocab_size), (1, n), device="cuda")
    pos = torch.arange(n, device="cuda")

    def once() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(model, prompt, pos)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    once()  # compile
    walls = sorted(once() for _ in range(5))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_name[e.name].append(e.device_time if hasattr(e, "device_time") else e.cuda_time)
    kernels = [
        {"name": k, "kind": kind_of(k), "launches_per_token": len(ts), "us_per_token": sum(ts)}
        for k, ts in per_name.items()
    ]  # (per prompt: the keys of the decode rows)
    kernels.sort(key=lambda k: -k["us_per_token"])
    torch._dynamo.reset()
    tok_s = [n / w for w in walls]
    # (the decode rows' keys, one "token" being one prefill: decode_tok_s = prefills per second)
    return {"unit": f"one prefill of {n} tokens", "families_off": off, "prefill_tokens": n,
            "decode_tok_s": 1 / walls[2], "prefill_tok_s": tok_s[2],
            "decode_min": 1 / walls[-1], "decode_max": 1 / walls[0], "kernels": kernels}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama3-8b-q4_k_m")
    p.add_argument("--configs", default="default", help="comma-separated; each: default or families joined by +")
    p.add_argument("--contexts", default="512")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--workdir", default="/tmp/inductor_fuse_bench")
    p.add_argument("--device-kind", default="nvidia-h200")
    p.add_argument("--prefill", type=int, default=0, help="profile the compiled prefill of this many tokens instead")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode.py profiles CUDA kernels: no CUDA device here")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth()
    env = environment()
    results = []
    for name in args.models.split(","):
        contexts = [int(c) for c in args.contexts.split(",")]
        model, _ = load_gguf(
            model_path(name, workdir), device="cuda", max_seq_len=max(contexts) + args.tokens + 8, progress=False
        )
        for ctx in contexts:
            floor_us = token_bytes(model, ctx) / bw * 1e6
            for config in args.configs.split(","):
                off = [] if config == "default" else config.split("+")
                if args.prefill:  # rows in the decode table's units: "token" = one prefill of the prompt
                    r = profile_prefill(model, off, args.prefill)
                    floor_us = float("nan")
                else:
                    r = profile_config(model, off, ctx, args.tokens)
                kern_us = sum(k["us_per_token"] for k in r["kernels"])
                wall_us = 1e6 / r["decode_tok_s"]
                by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
                for k in r["kernels"]:
                    by_kind[k["kind"]][0] += k["launches_per_token"]
                    by_kind[k["kind"]][1] += k["us_per_token"]
                label = f"{name} ctx {ctx}, families off: {'+'.join(off) or 'none'}"
                if args.prefill:
                    label = f"{name} prefill of {args.prefill} tokens ({r['prefill_tok_s']:.0f} tok/s; per prompt:)"
                print_table(
                    f"{label}: {r['decode_tok_s']:.1f} tok/s ({r['decode_min']:.1f}-{r['decode_max']:.1f}), "
                    f"{wall_us:.0f} us/token; kernels {kern_us:.0f} us; byte floor {floor_us:.0f} us",
                    ["kind", "launches/token", "us/token", "share of wall"],
                    [
                        [k, f"{n:.1f}", f"{us:.1f}", f"{us / wall_us:.1%}"]
                        for k, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])
                    ]
                    + [["gaps (launch latency, host)", "", f"{wall_us - kern_us:.1f}", f"{1 - kern_us / wall_us:.1%}"]],
                )
                print_table(
                    "top kernels",
                    ["kernel", "kind", "launches/token", "us/token", "us/launch"],
                    [
                        [k["name"][:70], k["kind"], f"{k['launches_per_token']:.1f}", f"{k['us_per_token']:.1f}",
                         f"{k['us_per_token'] / max(k['launches_per_token'], 1e-9):.2f}"]
                        for k in r["kernels"][:15]
                    ],
                )  # fmt: skip
                if "timeline" in r:
                    t = r["timeline"]
                    print_table(
                        f"timeline: {t['span_us_per_token']:.0f} us/token from the first kernel's start to the last "
                        f"one's end, {t['gap_us_per_token']:.1f} of it idle; each kernel charged the time it adds "
                        "past the end of those before it",
                        ["kernel", "grid", "after", "per token", "excl. us/token", "us/launch", "device us/launch",
                         "idle before"],
                        [
                            [x["name"][:40], x["grid"], x["after"], f"{x['launches_per_token']:.1f}",
                             f"{x['exclusive_us_per_token']:.1f}",
                             f"{x['exclusive_us_per_token'] / x['launches_per_token']:.2f}",
                             f"{x['device_us_per_launch']:.2f}", f"{x['idle_before_us_per_token']:.1f}"]
                            for x in t["roles"][:25]
                        ],
                    )  # fmt: skip
                results.append(
                    {
                        "model": name,
                        "context": ctx,
                        "device": args.device_kind,
                        "copy_bandwidth_GBs": bw / 1e9,
                        "token_floor_us": floor_us,
                        "wall_us_per_token": wall_us,
                        "kernel_us_per_token": kern_us,
                        "tokens": args.tokens,
                        **r,
                        **env,
                    }
                )
        del model
    out = Path(os.environ.get("OUT") or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.date.today().isoformat()}-profile.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
