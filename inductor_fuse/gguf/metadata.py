"""Reading GGUF metadata fields into Python values.

`gguf.GGUFReader` keeps every field as raw numpy parts. These helpers turn one field into a
Python value (str, int, float, bool, or a list of them), fast enough for 262k-entry vocabularies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType


class GGUFLoadError(ValueError):
    """A GGUF file could not be turned into a model or tokenizer. The message names the file and the cause."""


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The value of metadata `key`, or `default` when the file does not have it."""
    field = reader.fields.get(key)
    if field is None or not field.types:
        return default
    main = field.types[0]
    if main == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    if main != GGUFValueType.ARRAY:
        value = field.parts[-1][0]
        if main == GGUFValueType.BOOL:
            return bool(value)
        if main in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            return float(value)
        return int(value)
    sub = field.types[-1]
    if sub == GGUFValueType.STRING:
        return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    if not field.data:
        return []
    # Scalar array elements are consecutive one-element parts; gather them in one numpy call.
    values = np.concatenate([field.parts[i] for i in field.data])
    return values.tolist()


def require(reader: GGUFReader, key: str, path: str) -> Any:
    """The value of metadata `key`; GGUFLoadError naming the file when it is missing."""
    value = field_value(reader, key)
    if value is None:
        raise GGUFLoadError(f"{path}: missing metadata key {key!r}")
    return value
