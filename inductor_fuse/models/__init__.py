"""Plain model definitions (no fusion: the compiler does that)."""

from .transformer import CacheTooLarge, ModelArgs, Transformer

__all__ = ["CacheTooLarge", "ModelArgs", "Transformer"]
