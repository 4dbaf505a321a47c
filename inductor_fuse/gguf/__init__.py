"""GGUF files: model + tokenizer.

from inductor_fuse.gguf import load_gguf
model, tokenizer = load_gguf(path, device="cuda", max_seq_len=4096)
"""

from .loader import load_gguf, model_args
from .metadata import GGUFLoadError
from .tokenizer import GGUFTokenizer

__all__ = ["load_gguf", "model_args", "GGUFLoadError", "GGUFTokenizer"]
