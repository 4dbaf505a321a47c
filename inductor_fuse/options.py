"""Options of the ``inductor_fuse`` backend: one switch per rule family, and the mode.

The families and their option keys are those registered in ``patterns/registry.py``; every
family is on unless switched off: ``options={"siblings": False}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .patterns.registry import family_names

# Modes accepted as ``mode=``, with the same meaning as for stock Inductor.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass(frozen=True)
class FuseOptions:
    """Which rule families run: all registered ones but those in ``disabled``."""

    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | FuseOptions | None) -> FuseOptions:
        """``{family: bool}`` -> FuseOptions; ValueError for an unknown family, TypeError for a non-bool."""
        if options is None:
            return cls()
        if isinstance(options, FuseOptions):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"inductor_fuse options must be a dict, got {type(options).__name__}")
        names = family_names()
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(
                f"unknown inductor_fuse option(s) {unknown}; valid options are {list(names)} "
                "(each a bool that switches one rule family on or off)"
            )
        for name, value in options.items():
            if not isinstance(value, bool):
                raise TypeError(f"inductor_fuse option {name!r} must be a bool, got {type(value).__name__} {value!r}")
        return cls(frozenset(name for name, on in options.items() if not on))

    def enabled(self) -> tuple[str, ...]:
        """The families that run, in the order they run."""
        return tuple(name for name in family_names() if name not in self.disabled)


def validate_mode(mode: str | None) -> str:
    mode = mode or "default"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} for backend 'inductor_fuse'; valid modes are {list(MODES)}")
    return mode
