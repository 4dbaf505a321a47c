"""A/B the decode example between two source trees: does a change cost decode speed?

    python benchmarks/compare_decode.py --trees BASE_TREE . --runs 3 --name guards -- --gguf model.gguf

Runs ``examples/decode.py --json`` of each tree in a fresh process (PYTHONPATH = the tree),
alternating A, B, A, B, ... so drift hits both alike; arguments after ``--`` go to decode.py.
Prints decode tok/s per run, the median and the spread per tree, and writes
``<date>-decode-<name>.json`` (environment, every run, medians) to ``$OUT`` if set, else to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import environment, print_table, write_json


def run_decode(tree: Path, decode_args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(tree / "examples" / "decode.py"), "--json", *decode_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: decode.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", nargs=2, type=Path, required=True, metavar=("A", "B"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--name", default="ab")
    p.add_argument("decode_args", nargs="*", help="arguments for examples/decode.py (after --)")
    args = p.parse_args()

    runs: dict[str, list[dict]] = {str(t): [] for t in args.trees}
    for i in range(args.runs):
        for tree in args.trees:
            r = run_decode(tree.resolve(), args.decode_args)
            runs[str(tree)].append(
                {k: r[k] for k in ("decode_tok_s", "prefill_tok_s", "load_s", "warmup_s", "report", "tokens")}
            )
            print(
                f"run {i + 1} {str(tree):>30}: decode {r['decode_tok_s']:8.1f} tok/s  report {r['report']}", flush=True
            )

    summary, rows = {}, []
    for tree, rs in runs.items():
        tok_s = [r["decode_tok_s"] for r in rs]
        med = statistics.median(tok_s)
        summary[tree] = {"median_decode_tok_s": med, "min": min(tok_s), "max": max(tok_s)}
        rows.append([tree, med, min(tok_s), max(tok_s), f"{(max(tok_s) - min(tok_s)) / med:.1%}"])
    print_table(f"decode tok/s, {args.runs} runs per tree", ["tree", "median", "min", "max", "spread"], rows)
    same_tokens = len({tuple(r["tokens"]) for rs in runs.values() for r in rs}) == 1
    print(f"identical tokens in every run: {same_tokens}")
    write_json(
        f"{environment()['date']}-decode-{args.name}.json",
        {"decode_args": args.decode_args, "runs": runs, "summary": summary, "identical_tokens": same_tokens},
    )


if __name__ == "__main__":
    main()
