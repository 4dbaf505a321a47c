"""Plain model definitions (no fusion: the compiler does that)."""

from .transformer import ModelArgs, Transformer

__all__ = ["ModelArgs", "Transformer"]
