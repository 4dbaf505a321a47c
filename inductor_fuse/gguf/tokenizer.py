"""The tokenizer a GGUF file describes, rebuilt on the `tokenizers` library.

A GGUF has no `tokenizer.json`; it stores the vocabulary under llama.cpp's keys:

    tokenizer.ggml.model        "llama" (SentencePiece BPE: Llama 2, Gemma 3) | "gpt2" (byte-level BPE: Llama 3, Qwen)
    tokenizer.ggml.pre          which pre-tokenizer regex a byte-level BPE was trained with
    tokenizer.ggml.tokens       the vocabulary, in id order
    tokenizer.ggml.scores       SentencePiece scores (llama only)
    tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    tokenizer.ggml.merges       "a b" strings (gpt2 only; SentencePiece files derive them from the vocabulary)
    tokenizer.ggml.{bos,eos,eot,eom,unknown}_token_id, add_bos_token, add_space_prefix

We build a `tokenizers.Tokenizer` from these the way the original tokenizers are built (and as
transformers' GGUF loader does): a BPE model with byte fallback for SentencePiece, a byte-level BPE
with the pre-tokenizer regex for gpt2; control tokens become special added tokens, user-defined
ones plain added tokens (matched whole).

    tok = GGUFTokenizer.from_reader(reader, path)
    ids = tok.encode("The capital of France is")        # [bos, ...] when the file asks for BOS
    text = tok.decode(ids)
    stream = tok.stream(); pieces = [stream.step(i) for i in ids]   # incremental text, '' while incomplete
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import tempfile
from dataclasses import dataclass

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .. import config
from .metadata import GGUFLoadError, field_value
from .reader import GGUFFile

log = logging.getLogger("inductor_fuse")

# llama.cpp's token types (tokenizer.ggml.token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space

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


def merges_from_vocab(tokens: list[str], rank: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best (lowest `rank`) merged token first; ties: longer left piece, longer right piece, then
    vocabulary order (the order transformers' `generate_merges` gives). A rank only one token has
    (every rank of Gemma's, which ranks by position) needs no sort: its splits, longer left first."""
    vocab = set(tokens)

    def splits(token: str) -> list[tuple[str, str]]:  # longer left piece first
        cuts = range(len(token) - 1, 0, -1)
        return [(token[:c], token[c:]) for c in cuts if token[:c] in vocab and token[c:] in vocab]

    merges = []
    order = sorted(range(len(tokens)), key=rank.__getitem__)  # stable: equal ranks in vocabulary order
    for _, same in itertools.groupby(order, key=rank.__getitem__):
        same = list(same)
        if len(same) == 1:
            merges += splits(tokens[same[0]])
        else:
            keyed = [((-len(left), -len(right), i), left, right) for i in same for left, right in splits(tokens[i])]
            merges += [(left, right) for _, left, right in sorted(keyed)]
    return merges


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
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of `text`; BOS first when `bos` and the file asks for one (add_bos_token)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if bos and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True) -> TokenStream:
        """An incremental decoder: `.step(id)` returns the new text ('' while a character is incomplete)."""
        return TokenStream(self, skip_special_tokens)

    @classmethod
    def from_reader(cls, reader: GGUFFile, path: str = "<gguf>") -> GGUFTokenizer:
        kind = field_value(reader, "tokenizer.ggml.model")
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        if kind is None or tokens is None:
            raise GGUFLoadError(f"{path}: no tokenizer in the metadata (tokenizer.ggml.model / tokens missing)")
        types = field_value(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
        if kind not in ("llama", "gpt2"):
            raise GGUFLoadError(f"{path}: unsupported tokenizer.ggml.model {kind!r} (supported: 'llama', 'gpt2')")
        backend = _cached_backend(reader, kind, tokens, types, path)
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
        add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", add_bos_default))
        return cls(backend, bos_id=bos_id, eos_ids=tuple(eos_ids), add_bos=add_bos, kind=kind)


def _build_backend(reader: GGUFFile, kind: str, tokens: list[str], types: list[int], path: str) -> Tokenizer:
    if kind == "llama":
        arch = field_value(reader, "general.architecture", "")
        return _sentencepiece_bpe(reader, tokens, types, gemma=arch.startswith("gemma"))
    return _byte_level_bpe(reader, tokens, types, path)


def _cached_backend(reader: GGUFFile, kind: str, tokens: list[str], types: list[int], path: str) -> Tokenizer:
    """The `tokenizers.Tokenizer` of this vocabulary, from the cache (config.settings.cache_dir)
    when it was built before. Building derives a SentencePiece vocabulary's merges in Python
    (~2 s for Gemma's 262k tokens); the cached one loads from its JSON. The key hashes every
    tokenizer field of the file, the architecture, this module's source and the `tokenizers`
    version, so any change rebuilds. A cache that cannot be read or written is skipped (logged)."""
    cache_dir = config.settings.cache_dir
    if not cache_dir:
        return _build_backend(reader, kind, tokens, types, path)
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    h.update(tokenizers.__version__.encode())
    for key in sorted(k for k in reader.fields if k.startswith("tokenizer.")) + ["general.architecture"]:
        h.update(key.encode() + b"\0" + repr(reader.fields.get(key)).encode() + b"\0")
    file = os.path.join(cache_dir, "tokenizers", h.hexdigest() + ".json")
    try:
        if os.path.isfile(file):
            return Tokenizer.from_file(file)
    except Exception as e:  # noqa: BLE001 -- a damaged cache entry is rebuilt
        log.warning("inductor_fuse: tokenizer cache %s unreadable (%s); rebuilding it", file, e)
    backend = _build_backend(reader, kind, tokens, types, path)
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(file), suffix=".tmp", delete=False) as tmp:
            tmp.write(backend.to_str())
        os.replace(tmp.name, file)  # atomic: a concurrent reader sees all of it or nothing
    except OSError as e:
        log.info("inductor_fuse: tokenizer not cached (%s)", e)
    return backend


class TokenStream:
    """Incremental detokenization (tokenizers' DecodeStream): text appears once its bytes are complete."""

    def __init__(self, tokenizer: GGUFTokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer.backend
        self._stream = decoders.DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, token_id: int) -> str:
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


def _sentencepiece_bpe(reader: GGUFFile, tokens: list[str], types: list[int], gemma: bool) -> Tokenizer:
    """SentencePiece BPE: spaces are "▁", unknown bytes fall back to <0xNN> tokens.

    Gemma files store tokens made only of spaces with real spaces ("  "), while the text is matched
    with "▁" -- respell them. Their merge order is the order tokens appear in the file (Gemma's
    scores do not follow it); elsewhere the SentencePiece score orders the merges.
    """
    if gemma:
        tokens = [SPM_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
        rank = list(range(len(tokens)))
    else:
        scores = field_value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        rank = [-s for s in scores]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = field_value(reader, "tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None
    backend = Tokenizer(
        models.BPE(
            vocab=vocab, merges=merges_from_vocab(tokens, rank), unk_token=unk, fuse_unk=True, byte_fallback=True
        )
    )
    add_space_prefix = bool(field_value(reader, "tokenizer.ggml.add_space_prefix", not gemma))
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False)
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    else:
        backend.normalizer = normalizers.Replace(" ", SPM_SPACE)
    backend.decoder = decoders.Sequence(steps)
    _add_file_tokens(backend, tokens, types)
    return backend


def _byte_level_bpe(reader: GGUFFile, tokens: list[str], types: list[int], path: str) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): the text is split by the vocabulary's regex, then spelled as bytes."""
    pre = field_value(reader, "tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise GGUFLoadError(f"{path}: unsupported tokenizer.ggml.pre {pre!r} (supported: {sorted(PRE_TOKENIZERS)})")
    merges = field_value(reader, "tokenizer.ggml.merges")
    if merges is None:
        raise GGUFLoadError(f"{path}: byte-level BPE tokenizer without tokenizer.ggml.merges")
    spelling = byte_alphabet()
    alphabet = set(spelling.values())

    def spelled(t: str) -> bool:
        return set(t) <= alphabet

    vocab = {(t if spelled(t) else "".join(spelling[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)}
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
    return backend
