"""The fusion report: what each compilation rewrote, where, and what it skipped and why."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from typing import Iterator

from .options import FAMILIES

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


@dataclasses.dataclass
class FusionReport:
    """Report of one backend compilation (one Dynamo graph)."""

    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Rule family -> number of rewrites (every family present, zeros included)."""
        counts = {family: 0 for family in FAMILIES}
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
        if self.skipped:
            line += f" ({len(self.skipped)} candidate(s) skipped)"
        return line

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  rewrite {r.family} {r.label}: {r.detail} [{', '.join(r.nodes)}]" for r in self.rewrites]
        lines += [f"  skipped {s.family} [{', '.join(s.nodes)}]: {s.reason}" for s in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
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
    total = {family: 0 for family in FAMILIES}
    for rep in _history if reports is None else reports:
        for family, n in rep.counts.items():
            total[family] = total.get(family, 0) + n
    return total


def clear_reports() -> None:
    _history.clear()


@contextlib.contextmanager
def collecting() -> Iterator[FusionReport]:
    """Collect the rewrites of one compilation into a new report, then publish it."""
    report = FusionReport()
    _current.append(report)
    try:
        yield report
    finally:
        _current.pop()
        _history.append(report)
        log.info("%s", report.summary())
        log.debug("%s", report)


def current() -> FusionReport:
    """The report being filled; a throwaway one when a pass runs outside the backend."""
    return _current[-1] if _current else FusionReport()
