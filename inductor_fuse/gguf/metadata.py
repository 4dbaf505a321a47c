"""GGUF metadata lookups and the loader's error type.

`reader.read_gguf` decodes every field into a Python value (str, int, float, bool, or a list of
them); these helpers look one up with a default, or require it.
"""

from __future__ import annotations

from typing import Any


class GGUFLoadError(ValueError):
    """A GGUF file could not be turned into a model or tokenizer. The message names the file and the cause."""


def field_value(gguf, key: str, default: Any = None) -> Any:
    """The value of metadata `key` of a `reader.GGUFFile`, or `default` when the file does not have it."""
    return gguf.fields.get(key, default)


def require(gguf, key: str, path: str) -> Any:
    """The value of metadata `key`; GGUFLoadError naming the file when it is missing."""
    value = field_value(gguf, key)
    if value is None:
        raise GGUFLoadError(f"{path}: missing metadata key {key!r}")
    return value
