"""Options of the ``inductor_fuse`` backend: one switch per rule family."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The rule families this version implements, in the order their passes run.
FAMILIES = ("siblings",)

# Modes accepted as ``mode=``, with the same meaning as for stock Inductor.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass(frozen=True)
class FuseOptions:
    """Which rule families run. Every family is on by default.

    siblings: N >= 2 linears reading the same activation become one matmul + split.
    """

    siblings: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool):
                raise TypeError(f"inductor_fuse option {f.name!r} must be a bool, got {type(value).__name__} {value!r}")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> FuseOptions:
        if options is None:
            return cls()
        if isinstance(options, FuseOptions):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"inductor_fuse options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(FAMILIES))
        if unknown:
            raise ValueError(
                f"unknown inductor_fuse option(s) {unknown}; valid options are {list(FAMILIES)} "
                "(each a bool that switches one rule family on or off)"
            )
        return cls(**dict(options))

    def enabled(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if getattr(self, f))


def validate_mode(mode: str | None) -> str:
    mode = mode or "default"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} for backend 'inductor_fuse'; valid modes are {list(MODES)}")
    return mode
