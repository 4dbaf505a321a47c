"""The tokenizer a GGUF file describes.

A GGUF has no `tokenizer.json`; it stores the vocabulary under llama.cpp's keys:

    tokenizer.ggml.model        "llama" (SentencePiece BPE: Llama 2, Gemma 3) | "gpt2" (byte-level BPE: Llama 3, Qwen)
    tokenizer.ggml.pre          which pre-tokenizer regex a byte-level BPE was trained with
    tokenizer.ggml.tokens       the vocabulary, in id order
    tokenizer.ggml.scores       SentencePiece scores (llama only)
    tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    tokenizer.ggml.merges       "a b" strings (gpt2 only; SentencePiece files derive them from the vocabulary)
    tokenizer.ggml.{bos,eos,eot,eom,unknown}_token_id, add_bos_token, add_space_prefix

SentencePiece vocabularies run on `sentencepiece.SentencePieceBPE` (plain Python: nothing to build
but a dictionary, so Gemma's 262k pieces are ready at once). Byte-level BPE vocabularies run on a
`tokenizers` BPE with the pre-tokenizer regex, built as the original tokenizers are (and as
transformers' GGUF loader does). In both, control tokens are special (matched whole, skipped when
decoding on request) and user-defined ones are matched whole.

    tok = GGUFTokenizer.from_reader(reader, path)
    ids = tok.encode("The capital of France is")        # [bos, ...] when the file asks for BOS
    text = tok.decode(ids)
    stream = tok.stream(); pieces = [stream.step(i) for i in ids]   # incremental text, '' while incomplete
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .metadata import GGUFLoadError, field_value
from .reader import GGUFFile
from .sentencepiece import SPM_SPACE, SentencePieceBPE, check_token_id

log = logging.getLogger(__name__)

# llama.cpp's token types (tokenizer.ggml.token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes of byte-level BPE vocabularies, by `tokenizer.ggml.pre`
# (the same strings as the reference tokenizer.json files and llama.cpp's llama-vocab.cpp).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    regex: str
    ignore_merges: bool  # a word that is itself in the vocabulary is one token (llama.cpp and HF Llama 3)


PRE_TOKENIZERS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"), PreTokenizer(_LLAMA3_SPLIT, True)
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), PreTokenizer(_QWEN2_SPLIT, False)),
    "gpt-2": PreTokenizer(_GPT2_SPLIT, False),
}

# Control tokens that end a turn even when the file names another EOS (llama.cpp's EOG heuristic).
_END_OF_GENERATION = ("<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>", "</s>", "<|end|>")


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 bytes (byte-level BPE vocabularies are written in it)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    spelling, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


class GGUFTokenizer:
    """encode/decode for a GGUF vocabulary; see the module docstring."""

    def __init__(self, backend: Tokenizer, *, bos_id: int | None, eos_ids: tuple[int, ...], add_bos: bool, kind: str):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = eos_ids  # every id that ends generation, the file's EOS first
        self.add_bos = add_bos
        self.kind = kind  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)

    @property
    def eos_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def vocab_size(self) -> int:
        return self.backend.vocab_size

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of `text`; BOS first when `bos` and the file asks for one (add_bos_token)."""
        ids = self.backend.encode(text)
        if bos and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text` (no BOS), as the vocabulary spells them."""
        return self.backend.tokenize(text)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True):
        """An incremental decoder: `.step(id)` returns the new text ('' while a character is incomplete)."""
        return self.backend.stream(skip_special_tokens)

    @classmethod
    def from_reader(cls, reader: GGUFFile, path: str = "<gguf>") -> GGUFTokenizer:
        kind = field_value(reader, "tokenizer.ggml.model")
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        if kind is None or tokens is None:
            raise GGUFLoadError(f"{path}: no tokenizer in the metadata (tokenizer.ggml.model / tokens missing)")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise GGUFLoadError(f"{path}: tokenizer.ggml.tokens is not an array of strings")
        types = _per_token(reader, "tokenizer.ggml.token_type", tokens, int, path) or [TOKEN_NORMAL] * len(tokens)
        if kind not in ("llama", "gpt2"):
            raise GGUFLoadError(f"{path}: unsupported tokenizer.ggml.model {kind!r} (supported: 'llama', 'gpt2')")
        if kind == "llama":
            gemma = field_value(reader, "general.architecture", "").startswith("gemma")
            backend = _sentencepiece_bpe(reader, tokens, types, gemma, path)
        else:
            backend = _byte_level_bpe(reader, tokens, types, path)
        add_bos_default = kind == "llama"

        bos_id = field_value(reader, "tokenizer.ggml.bos_token_id")
        eos_ids = []
        for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
            i = field_value(reader, f"tokenizer.ggml.{key}")
            if i is not None and i not in eos_ids:
                eos_ids.append(i)
        for i, (token, ttype) in enumerate(zip(tokens, types)):
            if ttype == TOKEN_CONTROL and token in _END_OF_GENERATION and i not in eos_ids:
                eos_ids.append(i)
        add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", add_bos_default)
        if not isinstance(add_bos, bool):
            raise GGUFLoadError(f"{path}: tokenizer.ggml.add_bos_token is {add_bos!r}, not a bool")
        for key, i in (("bos_token_id", bos_id), *(("eos/eot token id", i) for i in eos_ids)):
            if i is not None and (isinstance(i, bool) or not isinstance(i, int)):
                raise GGUFLoadError(f"{path}: tokenizer.ggml.{key} is {i!r}, not an integer")
            if i is not None and not 0 <= i < len(tokens):
                raise GGUFLoadError(
                    f"{path}: tokenizer.ggml.{key} {i} is outside the vocabulary of {len(tokens)} tokens"
                )
        return cls(backend, bos_id=bos_id, eos_ids=tuple(eos_ids), add_bos=add_bos, kind=kind)


class ByteLevelBPE:
    """A `tokenizers.Tokenizer` (byte-level BPE) behind the interface SentencePieceBPE has."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        # (tokenizers drops an id it has no token for: "" where SentencePieceBPE raises)
        n = self.vocab_size
        for i in ids:
            check_token_id(i, n)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True) -> ByteLevelStream:
        return ByteLevelStream(self.tokenizer, skip_special_tokens)


class ByteLevelStream:
    """Incremental detokenization (tokenizers' DecodeStream): text appears once its bytes are complete."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._stream = decoders.DecodeStream(skip_special_tokens=skip_special_tokens)
        self._n = tokenizer.get_vocab_size(with_added_tokens=True)

    def step(self, token_id: int) -> str:
        check_token_id(int(token_id), self._n)
        return self._stream.step(self._tokenizer, int(token_id)) or ""


def _add_file_tokens(backend: Tokenizer, tokens: list[str], types: list[int], keep=lambda t: True) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens; both are
    matched whole in the text before the model splits anything (as llama.cpp does)."""
    vocab = backend.get_vocab()
    control = [
        AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k == TOKEN_CONTROL and keep(t)
    ]
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, k in zip(tokens, types)
        if k == TOKEN_USER_DEFINED and t in vocab
    ]
    backend.add_special_tokens(control)
    backend.add_tokens(user)


def _sentencepiece_bpe(
    reader: GGUFFile, tokens: list[str], types: list[int], gemma: bool, path: str = "<gguf>"
) -> SentencePieceBPE:
    """SentencePiece BPE: spaces are "▁", unknown bytes fall back to <0xNN> tokens.

    Gemma files store tokens made only of spaces with real spaces ("  "), while the text is matched
    with "▁" -- respell them. Their merge order is the order tokens appear in the file (Gemma's
    scores do not follow it); elsewhere the SentencePiece score orders the merges. llama.cpp
    honours add_space_prefix (default: true, false for Gemma).
    """
    if gemma:
        tokens = [SPM_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
        rank = range(len(tokens))
    else:
        scores = _per_token(reader, "tokenizer.ggml.scores", tokens, (int, float), path) or [0.0] * len(tokens)
        rank = [-s for s in scores]
    unk_id = field_value(reader, "tokenizer.ggml.unknown_token_id")
    return SentencePieceBPE(
        tokens,
        rank,
        special=[i for i, k in enumerate(types) if k == TOKEN_CONTROL],
        added=[i for i, k in enumerate(types) if k == TOKEN_USER_DEFINED],
        unk_id=unk_id if unk_id is not None and 0 <= unk_id < len(tokens) else None,
        add_space_prefix=bool(field_value(reader, "tokenizer.ggml.add_space_prefix", not gemma)),
    )


def _per_token(reader: GGUFFile, key: str, tokens: list[str], kind, path: str) -> list | None:
    """An optional per-token array (token types, scores): None if absent, else exactly one `kind`
    value per token (a shorter array would silently drop the last tokens' types or scores)."""
    values = field_value(reader, key)
    if values is None:
        return None
    if (
        not isinstance(values, list)
        or len(values) != len(tokens)
        or any(isinstance(v, bool) or not isinstance(v, kind) for v in values)
    ):
        what = f"{len(values)} values" if isinstance(values, list) else repr(values)[:40]
        raise GGUFLoadError(f"{path}: {key} must hold one number per token ({len(tokens)} tokens), got {what}")
    return values


def _byte_level_bpe(reader: GGUFFile, tokens: list[str], types: list[int], path: str) -> ByteLevelBPE:
    """Byte-level BPE (GPT-2 style): the text is split by the vocabulary's regex, then spelled as bytes."""
    pre = field_value(reader, "tokenizer.ggml.pre")
    if pre is None:  # (llama.cpp warns too, and uses its "default" split)
        log.warning("%s: no tokenizer.ggml.pre in the file: splitting text with GPT-2's regex", path)
        pre = "gpt-2"
    if pre not in PRE_TOKENIZERS:
        raise GGUFLoadError(f"{path}: unsupported tokenizer.ggml.pre {pre!r} (supported: {sorted(PRE_TOKENIZERS)})")
    merges = field_value(reader, "tokenizer.ggml.merges")
    if merges is None:
        raise GGUFLoadError(f"{path}: byte-level BPE tokenizer without tokenizer.ggml.merges")
    spelling = byte_alphabet()
    alphabet = set(spelling.values())

    def spelled(t: str) -> bool:
        return set(t) <= alphabet

    keys = [t if spelled(t) else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {k: i for i, k in enumerate(keys)}
    if len(vocab) < len(tokens):  # a token twice (as bytes): one id would be lost, ids past the rest refused
        first: dict[str, int] = {}
        i, j = next((first[k], j) for j, k in enumerate(keys) if first.setdefault(k, j) != j)
        raise GGUFLoadError(
            f"{path}: tokenizer.ggml.tokens {i} ({tokens[i]!r}) and {j} ({tokens[j]!r}) are the same token"
        )
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    spec = PRE_TOKENIZERS[pre]
    try:
        backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges))
    except Exception as e:  # tokenizers raises a bare Exception ("Token ... out of vocabulary")
        raise GGUFLoadError(f"{path}: bad tokenizer.ggml.merges: {e}") from e
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec.regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # A control token outside the byte alphabet is a mislabelled vocabulary entry; adding it would
    # grow the vocabulary past the model's, so it is left out.
    _add_file_tokens(backend, tokens, types, keep=spelled)
    return ByteLevelBPE(backend)
