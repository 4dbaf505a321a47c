"""The fusion report: what each compilation rewrote, where, and what it skipped and why."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import time
import traceback
from collections.abc import Iterator

from .patterns.registry import family_names

log = logging.getLogger("inductor_fuse")


@dataclasses.dataclass(frozen=True)
class Rewrite:
    family: str  # rule family, e.g. "siblings"
    label: str  # short name of the group, e.g. "(q_proj,k_proj,v_proj)"
    nodes: tuple[str, ...]  # FX node names that were replaced
    detail: str  # shapes / formats, e.g. "x[6,64] @ [64 -> 64+16+16] float32"


@dataclasses.dataclass(frozen=True)
class Skip:
    family: str
    nodes: tuple[str, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class Failure:
    """A rule (or the backend's compile with rules) raised; the graph compiled without it."""

    family: str  # rule family, or "backend" for a failure outside the rules
    error: str  # "ValueError: ..."
    where: str  # see where(): "patterns/siblings.py:131 in _fuse"

    @classmethod
    def of(cls, family: str, exc: BaseException) -> Failure:
        return cls(family, f"{type(exc).__name__}: {exc}", where(exc))


def where(exc: BaseException) -> str:
    """Where ``exc`` was raised: the innermost frame of this package, and the frame that raised
    when that is elsewhere (torch, a monkeypatched function): "a.py:1 in f (raised at b.py:2 in g)"."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def fmt(f: traceback.FrameSummary) -> str:
        path = os.path.abspath(f.filename)
        return f"{path.removeprefix(pkg)}:{f.lineno} in {f.name}"

    ours = [f for f in frames if os.path.abspath(f.filename).startswith(pkg)]
    if not ours:
        return fmt(frames[-1])
    if ours[-1] is frames[-1]:
        return fmt(ours[-1])
    return f"{fmt(ours[-1])} (raised at {fmt(frames[-1])})"


@dataclasses.dataclass
class FusionReport:
    """Report of one backend compilation (one Dynamo graph)."""

    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    # Seconds spent, summed over this graph's compile: "rules/<family>" per rule family that ran
    # (a rerun after another family failed included), "compile" for the whole backend compile of
    # the graph (Inductor's lowering and code generation included), "frozen_cache/save" (the entry
    # and the check of its recipes) and "frozen_cache/load" (a warm start: constants re-made, code
    # loaded).
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # The frozen-graph cache (frozen_cache.py): "hit" (rewrites and skips replayed from the entry
    # its cold compile saved), "saved", or "" (off, not cacheable, not saved: see the notes).
    frozen_cache: str = ""

    def add_seconds(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    @property
    def rule_seconds(self) -> dict[str, float]:
        """Seconds per rule family (and the pass's graph copy): ``seconds``' "rules/" entries."""
        return {k.removeprefix("rules/"): v for k, v in self.seconds.items() if k.startswith("rules/")}

    @property
    def counts(self) -> dict[str, int]:
        """Rule family -> number of rewrites (every family present, zeros included)."""
        counts = dict.fromkeys(family_names(), 0)
        for r in self.rewrites:
            counts[r.family] = counts.get(r.family, 0) + 1
        return counts

    def summary(self) -> str:
        """One line, e.g. ``inductor_fuse: siblings x32 (q,k,v), x32 (gate,up)``."""
        by_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for r in self.rewrites:
            by_family[r.family][r.label] += 1
        if not by_family:
            parts = ["no rewrites"]
        else:
            parts = [
                f"{family} " + ", ".join(f"x{n} {label}" for label, n in labels.items())
                for family, labels in by_family.items()
            ]
        line = "inductor_fuse: " + "; ".join(parts)
        if self.frozen_cache == "hit":
            line += " (from the frozen-graph cache)"
        if self.skipped:
            line += f" ({len(self.skipped)} candidate(s) skipped)"
        if self.failures:
            line += " [FAILED, skipped: " + ", ".join(f.family for f in self.failures) + "]"
        return line

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  rewrite {r.family} {r.label}: {r.detail} [{', '.join(r.nodes)}]" for r in self.rewrites]
        lines += [f"  skipped {s.family} [{', '.join(s.nodes)}]: {s.reason}" for s in self.skipped]
        lines += [f"  FAILED {f.family} at {f.where}: {f.error}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        if self.seconds:
            rules = self.rule_seconds
            line = f"  time: rules {sum(rules.values()):.2f} s"
            if rules:
                line += " (" + ", ".join(f"{k} {v:.2f}" for k, v in rules.items()) + ")"
            if "compile" in self.seconds:
                line += f" of a {self.seconds['compile']:.2f} s compile"
            lines.append(line)
        return "\n".join(lines)


_history: list[FusionReport] = []
_current: list[FusionReport] = []


def last_report() -> FusionReport | None:
    """The report of the most recent ``inductor_fuse`` compilation, or None before the first."""
    return _history[-1] if _history else None


def all_reports() -> list[FusionReport]:
    """Reports of every ``inductor_fuse`` compilation in this process, oldest first."""
    return list(_history)


def total_counts(reports: list[FusionReport] | None = None) -> dict[str, int]:
    """Counts summed over ``reports`` (default: every compilation so far)."""
    total = dict.fromkeys(family_names(), 0)
    for rep in _history if reports is None else reports:
        for family, n in rep.counts.items():
            total[family] = total.get(family, 0) + n
    return total


def clear_reports() -> None:
    _history.clear()


@contextlib.contextmanager
def discarding() -> Iterator[FusionReport]:
    """Collect into a new report, thrown away unless the caller keeps it."""
    report = FusionReport()
    _current.append(report)
    try:
        yield report
    finally:
        _current.pop()


@contextlib.contextmanager
def collecting() -> Iterator[FusionReport]:
    """Collect the rewrites of one compilation into a new report, then publish it (not when the
    compilation raised: e.g. Dynamo's request to trace again, whose retry reports itself), with the
    compilation's time as "compile"."""
    start = time.perf_counter()
    with discarding() as report:
        yield report
    report.add_seconds("compile", time.perf_counter() - start)
    _history.append(report)
    log.info("%s", report.summary())
    log.debug("%s", report)


def current() -> FusionReport:
    """The report being filled; a throwaway one when a pass runs outside the backend."""
    return _current[-1] if _current else FusionReport()
