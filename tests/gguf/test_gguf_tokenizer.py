"""GGUFTokenizer against transformers' GGUF tokenizer loading (a test-only dependency) and against
the tokenizer a tiny file was written from: same ids for ASCII, accents, emoji, code, leading
spaces, newlines and special tokens; decode and streaming decode give the text back."""

import os
import random

import pytest

from inductor_fuse import config
from inductor_fuse.gguf import GGUFTokenizer
from inductor_fuse.gguf import tokenizer as tokenizer_module
from inductor_fuse.gguf.reader import read_gguf
from inductor_fuse.gguf.tokenizer import merges_from_vocab

PROMPTS = [
    "The capital of France is",
    "Hello, world!",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows",
    "Les élèves étudient à l'école; où est la bibliothèque? Ça va.",
    "Grüße aus Köln, naïve café, São Paulo, Ångström",
    "Emoji: 😀 🚀 ✨ 👩‍💻 🇫🇷",
    "日本語のテキストと中文文本",
    "def fibonacci(n):\n    if n < 2:\n        return n\n\treturn fibonacci(n - 1)",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "I'm sure they'll say it's what we've done, isn't it? DON'T",
    "Numbers 1234567 3.14159 2026-11-21",
    "",
]


def transformers_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def check_stream(tok: GGUFTokenizer, text: str):
    ids = tok.encode(text, bos=False)
    stream = tok.stream()
    assert "".join(stream.step(i) for i in ids) == tok.decode(ids)


# ---- byte-level BPE files written by the tests ("gpt2" model; llama-bpe and qwen2 regexes) ----


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def bpe(request, tiny_gguf):
    path, _, _, trained = tiny_gguf(request.param)
    return request.param, path, GGUFTokenizer.from_reader(read_gguf(path), path), trained


def test_bpe_equals_trained_tokenizer(bpe):
    _, _, tok, trained = bpe
    for text in PROMPTS:
        assert tok.encode(text, bos=False) == trained.encode(text).ids, text


def test_bpe_equals_transformers(bpe):
    _, path, tok, _ = bpe
    hf = transformers_tokenizer(path)
    for text in PROMPTS + ["<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|>x<|eot_id|>"]:
        assert tok.encode(text) == hf(text)["input_ids"], text


def test_bpe_bos_eos_and_specials(bpe):
    arch, _, tok, trained = bpe
    vocab = trained.get_vocab()
    if arch == "llama":
        assert tok.add_bos and tok.encode("hi")[0] == vocab["<|begin_of_text|>"]
        assert tok.eos_ids == (vocab["<|end_of_text|>"], vocab["<|eot_id|>"])
        assert tok.encode("<|eot_id|>", bos=False) == [vocab["<|eot_id|>"]]
    else:
        assert not tok.add_bos and tok.encode("hi") == tok.encode("hi", bos=False)
        assert tok.eos_ids == (vocab["<|endoftext|>"], vocab["<|im_end|>"])


def test_bpe_decode_round_trip(bpe):
    _, _, tok, _ = bpe
    for text in PROMPTS:
        assert tok.decode(tok.encode(text)) == text
        check_stream(tok, text)


def test_unsupported_pre_tokenizer(tmp_path, tiny_gguf):
    import tiny_gguf as tg
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "pre.gguf"
    old = tg.PRE["llama"]
    tg.PRE["llama"] = "some-new-regex"
    try:
        write_tiny_gguf(path, "llama", tokenizer=tiny_gguf("llama")[3])
    finally:
        tg.PRE["llama"] = old
    from inductor_fuse.gguf import GGUFLoadError

    with pytest.raises(GGUFLoadError, match="pre.gguf: unsupported tokenizer.ggml.pre 'some-new-regex'"):
        GGUFTokenizer.from_reader(read_gguf(str(path)), str(path))


# ---- SentencePiece ("llama" model): a Llama-2-style vocabulary written by the tests ----


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    from tiny_gguf import write_spm_gguf

    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    write_spm_gguf(path)
    return str(path)


def test_sentencepiece_equals_transformers(spm_path):
    tok = GGUFTokenizer.from_reader(read_gguf(spm_path), spm_path)
    hf = transformers_tokenizer(spm_path)
    assert tok.kind == "llama" and tok.add_bos and tok.eos_ids == (2,)
    for text in PROMPTS + ["<s>hi</s>", " x"]:
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
        check_stream(tok, text)


def test_sentencepiece_byte_fallback_and_space_prefix(spm_path):
    tok = GGUFTokenizer.from_reader(read_gguf(spm_path), spm_path)
    pieces = tok.backend.encode("Hi 日", add_special_tokens=False).tokens
    assert pieces[0].startswith("\u2581")  # the space prefix
    assert pieces[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]  # 日 is not in the vocabulary: its UTF-8 bytes


def test_sentencepiece_without_space_prefix(tmp_path):
    # llama.cpp honours add_space_prefix = false (transformers' GGUF loader prepends "▁" anyway)
    from tiny_gguf import write_spm_gguf

    path = str(tmp_path / "nospace.gguf")
    write_spm_gguf(path, add_space_prefix=False)
    tok = GGUFTokenizer.from_reader(read_gguf(path), path)
    assert not tok.backend.encode("The capital", add_special_tokens=False).tokens[0].startswith("\u2581")
    for text in PROMPTS:
        assert tok.decode(tok.encode(text)) == text


# ---- SentencePiece: the real Gemma 3 file ("llama" model) ----


def test_merges_from_vocab_order():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    # best merged token first (rank = position here); for one token, the longer left piece first
    assert merges_from_vocab(tokens, list(range(6))) == [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]


def test_merges_from_vocab_ties():
    # equal ranks: longer left piece, then longer right piece, then vocabulary order, across tokens
    rng = random.Random(0)
    tokens = sorted({"".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(300)})
    rng.shuffle(tokens)
    rank = [float(rng.randint(0, 20)) for _ in tokens]
    vocab = set(tokens)
    splits = [
        ((r, -cut, cut - len(t), i), t[:cut], t[cut:])
        for i, (t, r) in enumerate(zip(tokens, rank))
        for cut in range(1, len(t))
        if t[:cut] in vocab and t[cut:] in vocab
    ]
    assert merges_from_vocab(tokens, rank) == [(left, right) for _, left, right in sorted(splits)]


@pytest.mark.slow
def test_gemma_equals_transformers(gemma, gemma_path):
    _, tok = gemma
    hf = transformers_tokenizer(gemma_path)
    prompts = PROMPTS + ["<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", "<0x41> <unk> ▁x"]
    for text in prompts:
        assert tok.encode(text) == hf(text)["input_ids"], text
        assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True), text


@pytest.mark.slow
def test_gemma_specials_and_stream(gemma):
    _, tok = gemma
    assert tok.kind == "llama" and tok.add_bos and tok.bos_id == 2
    assert tok.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
    assert 1 in tok.eos_ids and 106 in tok.eos_ids  # <eos>, <end_of_turn>
    for text in PROMPTS:
        check_stream(tok, text)
        assert tok.decode(tok.encode(text)) == text


def test_the_tokenizer_is_cached_and_the_cache_follows_the_file(spm_path, tmp_path, monkeypatch):
    """Built once per vocabulary, then loaded from config.settings.cache_dir; a file with another
    vocabulary (or other tokenizer fields) gets its own entry; no cache dir: no files."""
    from tiny_gguf import write_spm_gguf

    built = []
    real_build = tokenizer_module._build_backend
    monkeypatch.setattr(tokenizer_module, "_build_backend", lambda *a: built.append(a[-1]) or real_build(*a))
    other = str(tmp_path / "nospace.gguf")
    write_spm_gguf(other, add_space_prefix=False)
    with config.patch(cache_dir=str(tmp_path / "cache")):
        first = GGUFTokenizer.from_reader(read_gguf(spm_path), spm_path)
        again = GGUFTokenizer.from_reader(read_gguf(spm_path), spm_path)
        assert built == [spm_path]  # the second one came from the cache
        GGUFTokenizer.from_reader(read_gguf(other), other)
        assert built == [spm_path, other]
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 2
    for text in PROMPTS:
        assert again.encode(text) == first.encode(text) and again.decode(again.encode(text)) == first.decode(
            first.encode(text)
        )
    with config.patch(cache_dir=""):
        GGUFTokenizer.from_reader(read_gguf(spm_path), spm_path)
    assert built == [spm_path, other, spm_path]
