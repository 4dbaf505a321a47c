"""A/B of one inductor_fuse setting on end-to-end decode: the setting's values alternate in one
process, round after round, each run one bench_decode.py collection (load, compile, CUDA-graph
recording, timed decode); then a table of each value's run medians and a JSON file.

    python benchmarks/ab_decode.py pdl=0,1 -- --models llama3-8b-q4_k_m --contexts 512 --prefill eager
    python benchmarks/ab_decode.py small_m=auto,off --rounds 2 --discard-first -- --models llama3-1b-q4_k_m

The setting is a field of `inductor_fuse.config.Settings` (booleans as 0 / 1), applied with
`config.patch` around each run. After `--`: bench_decode.py's arguments (`--systems` defaults to
inductor_fuse here). Alternating in one process keeps the machine, its clocks and the caches the
same for both values; the order is recorded. --discard-first runs the first value once, untimed,
before the rounds: on one H100 the first run of a process was about 4% faster than every later
one, whichever value it ran (`results/2026-12-06-norm-weights-first-h100.json`).

Per (model, system, context) and value: the median of the runs' decode medians, their min-max,
and the gain against the first value. JSON: `<date>-ab-decode.json` in $OUT or
benchmarks/results/ (`common.write_json`): {"environment", "setting", "values", "discard_first",
"summary", "rows"}, each bench_decode row with `ab_value` and `ab_round`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_decode  # noqa: E402
from common import print_table, write_json  # noqa: E402

from inductor_fuse import config  # noqa: E402


def parse_setting(text: str) -> tuple[str, list]:
    """ "field=v1,v2,..." -> (field, values typed as the field's current value: bool from 0 / 1)."""
    field, _, values = text.partition("=")
    names = [f.name for f in dataclasses.fields(config.Settings)]
    if field not in names:
        raise SystemExit(f"unknown setting {field!r}; settings: {names}")
    raw = [v for v in values.split(",") if v]
    if len(raw) < 2:
        raise SystemExit(f"{text!r}: give at least two values, e.g. {field}=0,1")
    kind = type(getattr(config.settings, field))
    if kind is bool:
        if not set(raw) <= {"0", "1"}:
            raise SystemExit(f"{field} is a boolean: values 0 or 1, not {raw}")
        return field, [v == "1" for v in raw]
    if kind not in (str, int, float):
        raise SystemExit(f"{field} ({kind.__name__}) cannot be set from the command line")
    return field, [kind(v) for v in raw]


def summarize(rows: list[dict], values: list) -> list[dict]:
    """Per (model, system, context, value): the runs' decode medians -> median, min, max, gain
    against the first value's median."""
    out = []
    keys = sorted({(r["model"], r["system"], r["context"]) for r in rows}, key=str)
    for key in keys:
        base = None
        for v in values:
            xs = [
                r["decode_tok_s"] for r in rows if (r["model"], r["system"], r["context"]) == key and r["ab_value"] == v
            ]
            if not xs:
                continue
            med = statistics.median(xs)
            base = med if base is None else base
            out.append(
                {"model": key[0], "system": key[1], "context": key[2], "value": v, "runs": len(xs), "median": med,
                 "min": min(xs), "max": max(xs), "gain": med / base - 1}
            )  # fmt: skip
    return out


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setting", help="field=value,value (a field of inductor_fuse.config.Settings)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each value (default 3)")
    ap.add_argument("--discard-first", action="store_true", help="one untimed run of the first value first")
    a = ap.parse_args(own)
    field, values = parse_setting(a.setting)
    if "--systems" not in rest:
        rest = ["--systems", "inductor_fuse", *rest]
    args = bench_decode.parse_args(rest)
    plan = [(None, values[0])] if a.discard_first else []
    plan += [(i, v) for i in range(a.rounds) for v in values]
    rows: list[dict] = []
    for rnd, v in plan:
        with config.patch(**{field: v}):
            got = bench_decode.collect(args)
        if rnd is None:
            print(f"discarded first run ({field}={v}): {[round(r['decode_tok_s'], 1) for r in got]}")
            continue
        rows += [{**r, "ab_value": v, "ab_round": rnd} for r in got]
        print(f"round {rnd} {field}={v}: {[round(r['decode_tok_s'], 1) for r in got]}", flush=True)
    summary = summarize(rows, values)
    print_table(
        f"A/B of {field} (median of the runs' decode medians; each run alternating in one process)",
        ["model", "system", "context", field, "runs", "decode tok/s", "min-max", "vs first"],
        [
            [s["model"], s["system"], s["context"], s["value"], s["runs"], round(s["median"], 1),
             f"{s['min']:.1f}-{s['max']:.1f}", f"{100 * s['gain']:+.1f}%"]
            for s in summary
        ],
    )  # fmt: skip
    doc = {"setting": field, "values": values, "discard_first": a.discard_first, "summary": summary, "rows": rows}
    write_json(f"{datetime.date.today().isoformat()}-ab-decode.json", doc)


if __name__ == "__main__":
    main()
