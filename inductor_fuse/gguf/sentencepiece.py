"""SentencePiece BPE (GGUF `tokenizer.ggml.model = "llama"`: Llama 2, Gemma 3) in plain Python.

Nothing is built at load but a dictionary from piece to id: a 262k-piece vocabulary (Gemma 3) is
ready in a few tens of milliseconds, where a `tokenizers` BPE needs the merge list derived from the
vocabulary (515k merges for Gemma) and a second or more to build or parse it.

Encoding gives the ids `tokenizers`' BPE gives with merges derived from the vocabulary (as
transformers derives them for SentencePiece vocabularies, and as llama.cpp merges):

1. Added tokens (the file's control and user-defined pieces) are cut out of the raw text first,
   leftmost-longest, and each becomes its own id.
2. Each remaining section: spaces become "▁"; with `add_space_prefix`, the section at the start
   of the text gets a leading "▁" (unless it has one).
3. The section is split into characters: a character in the vocabulary is its piece, any other
   becomes the pieces of its UTF-8 bytes (`<0xNN>`), or `<unk>` (consecutive ones fused) where the
   vocabulary has no byte pieces.
4. Adjacent pieces whose concatenation is a piece are merged, best first, until none is left.
   "Best": the merged piece's rank (its position in the vocabulary for Gemma, whose scores do not
   follow it; else minus its score), then the longer left piece, the longer right piece, the later
   piece id, then the leftmost position. That is the order of the derived merge list.

Decoding: "▁" becomes a space, runs of `<0xNN>` pieces become their bytes (invalid UTF-8: one
U+FFFD per byte), control tokens are skipped on request, and with `add_space_prefix` one leading
space is removed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _byte_of(piece: str) -> int | None:
    """The byte a `<0xNN>` piece stands for, else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


class SentencePieceBPE:
    """encode / decode for one SentencePiece BPE vocabulary (see the module docstring)."""

    def __init__(
        self,
        pieces: Sequence[str],
        rank: Sequence[float],
        *,
        special: Iterable[int] = (),
        added: Iterable[int] = (),
        unk_id: int | None = None,
        add_space_prefix: bool = False,
    ):
        """pieces: the vocabulary in id order; rank: per id, lower merges first; special: ids of
        control tokens (matched whole in the text, skipped by decode on request); added: ids of
        other pieces matched whole in the text (user-defined)."""
        self.pieces = list(pieces)
        self.rank = rank
        self.vocab = {p: i for i, p in enumerate(self.pieces)}  # a repeated piece: its last id
        self.special = frozenset(special)
        self.unk_id = unk_id
        self.add_space_prefix = add_space_prefix
        self._byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in range(256)]
        # added tokens, matched leftmost-longest: by first character, then each length, longest first
        whole = {self.pieces[i] for i in (*self.special, *added) if self.pieces[i]}
        self._added_lengths: dict[str, list[int]] = {}
        for p in whole:
            self._added_lengths.setdefault(p[0], []).append(len(p))
        for first, lengths in self._added_lengths.items():
            self._added_lengths[first] = sorted(set(lengths), reverse=True)
        self._added = whole

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    # ---- encoding ----

    def encode(self, text: str) -> list[int]:
        ids = []
        for start, section, is_added in self._sections(text):
            if is_added:
                ids.append(self.vocab[section])
                continue
            word = section.replace(" ", SPM_SPACE)
            if self.add_space_prefix and start == 0 and not word.startswith(SPM_SPACE):
                word = SPM_SPACE + word  # the section that starts the text only
            ids += self._bpe(word)
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces `encode` gives, as strings."""
        return [self.pieces[i] for i in self.encode(text)]

    def _sections(self, text: str) -> list[tuple[int, str, bool]]:
        """The text cut at its added tokens: (offset, section, is an added token), in order."""
        out, start, pos, n = [], 0, 0, len(text)
        lengths, added = self._added_lengths, self._added
        while pos < n:
            hit = next((k for k in lengths.get(text[pos], ()) if text[pos : pos + k] in added), 0)
            if hit:
                if start < pos:
                    out.append((start, text[start:pos], False))
                out.append((pos, text[pos : pos + hit], True))
                pos = start = pos + hit
            else:
                pos += 1
        if start < n:
            out.append((start, text[start:], False))
        return out

    def _bpe(self, word: str) -> list[int]:
        vocab, pieces = self.vocab, self.pieces
        ids: list[int] = []
        unk_pending = False
        for ch in word:
            i = vocab.get(ch)
            if i is not None:
                if unk_pending:
                    ids.append(self.unk_id)
                    unk_pending = False
                ids.append(i)
                continue
            byte_ids = [self._byte_ids[b] for b in ch.encode("utf-8")]
            if None not in byte_ids:
                ids += byte_ids  # (as tokenizers: a pending <unk> is not flushed before bytes)
            elif self.unk_id is not None:
                unk_pending = True  # consecutive unknown characters fuse into one <unk>
            else:
                raise ValueError(f"character {ch!r} has no piece, no byte pieces and no <unk> in the vocabulary")
        if unk_pending:
            ids.append(self.unk_id)
        n = len(ids)
        if n < 2:
            return ids
        strs = [pieces[i] for i in ids]
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        rank = self.rank

        def key(left: str, right: str):
            j = vocab.get(left + right)
            if j is None:
                return None
            return (rank[j], -len(left), -len(right), j)

        heap = []
        for pos in range(n - 1):
            k = key(strs[pos], strs[pos + 1])
            if k is not None:
                heap.append((k, pos))
        heapq.heapify(heap)
        while heap:
            k, pos = heapq.heappop(heap)
            right = nxt[pos]
            if not alive[pos] or right >= n:
                continue
            new_id = k[3]
            if vocab.get(strs[pos] + strs[right]) != new_id:  # stale: the pair changed since
                continue
            strs[pos] += strs[right]
            ids[pos] = new_id
            alive[right] = False
            nxt[pos] = nxt[right]
            if nxt[pos] < n:
                prv[nxt[pos]] = pos
            if prv[pos] >= 0:
                k2 = key(strs[prv[pos]], strs[pos])
                if k2 is not None:
                    heapq.heappush(heap, (k2, prv[pos]))
            if nxt[pos] < n:
                k2 = key(strs[pos], strs[nxt[pos]])
                if k2 is not None:
                    heapq.heappush(heap, (k2, pos))
        return [i for i, a in zip(ids, alive) if a]

    # ---- decoding ----

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        run = bytearray()
        for i in map(int, ids):  # (a tensor's elements hash by identity: not found in `special`)
            piece = self._piece(i)
            if skip_special_tokens and i in self.special:
                continue
            b = _byte_of(piece)
            if b is not None:
                run.append(b)
                continue
            if run:
                out.append(_bytes_text(run))
                run = bytearray()
            out.append(piece.replace(SPM_SPACE, " "))
        if run:
            out.append(_bytes_text(run))
        text = "".join(out)
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    def _piece(self, i: int) -> str:
        check_token_id(i, len(self.pieces))
        return self.pieces[i]

    def stream(self, skip_special_tokens: bool = True) -> SentencePieceStream:
        return SentencePieceStream(self, skip_special_tokens)


def check_token_id(i: int, n: int) -> None:
    """ValueError unless 0 <= i < n (a vocabulary of n tokens): decoding never drops or invents a token."""
    if not 0 <= i < n:
        raise ValueError(f"token id {i} is outside the vocabulary (0..{n - 1})")


def _bytes_text(run: bytes) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


class SentencePieceStream:
    """Incremental decoding: `step(id)` returns the new text, '' while a character's bytes are
    incomplete. The steps of a token sequence add up to `decode` of it, but for a run of byte
    pieces that holds a whole character before invalid bytes (the stream has shown the character
    already; `decode` turns the whole run into U+FFFD)."""

    def __init__(self, spm: SentencePieceBPE, skip_special_tokens: bool = True):
        self._spm = spm
        self._skip = skip_special_tokens
        self._run = bytearray()
        self._started = False

    def step(self, token_id: int) -> str:
        spm = self._spm
        token_id = int(token_id)
        piece = spm._piece(token_id)
        if self._skip and token_id in spm.special:
            return ""
        b = _byte_of(piece)
        if b is not None:
            self._run.append(b)
            try:
                text = self._run.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data" and len(self._run) < 4:
                    return ""  # a character still incomplete
                text = "\ufffd" * len(self._run)
            self._run = bytearray()
        else:
            # bytes still pending are an incomplete character: one U+FFFD each, as decode gives them
            text = "\ufffd" * len(self._run) + piece.replace(SPM_SPACE, " ")
            self._run = bytearray()
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if not self._started and text:
            self._started = True
            if self._spm.add_space_prefix and text.startswith(" "):
                text = text[1:]
        return text
