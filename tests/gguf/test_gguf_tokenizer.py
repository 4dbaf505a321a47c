"""GGUFTokenizer against transformers' GGUF tokenizer loading (a test-only dependency), against
the tokenizer a tiny file was written from, and (SentencePiece) against a `tokenizers` BPE built
from the merge list the vocabulary implies: same ids for ASCII, accents, emoji, code, leading
spaces, newlines and special tokens; decode and streaming decode give the text back."""

import itertools
import os
import random

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from inductor_fuse.gguf import GGUFLoadError, GGUFTokenizer
from inductor_fuse.gguf.reader import read_gguf
from inductor_fuse.gguf.sentencepiece import SPM_SPACE, SentencePieceBPE

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
    trained = tiny_gguf("llama")[3]  # before the patch: the session's shared tiny file keeps its regex
    old = tg.PRE["llama"]
    tg.PRE["llama"] = "some-new-regex"
    try:
        write_tiny_gguf(path, "llama", tokenizer=trained)
    finally:
        tg.PRE["llama"] = old
    from inductor_fuse.gguf import GGUFLoadError

    with pytest.raises(GGUFLoadError, match="pre.gguf: unsupported tokenizer.ggml.pre 'some-new-regex'"):
        GGUFTokenizer.from_reader(read_gguf(str(path)), str(path))


def test_a_missing_pre_tokenizer_is_a_warning(tmp_path, tiny_gguf, caplog):
    # llama.cpp warns too; the text is then split with GPT-2's regex
    import tiny_gguf as tg
    from tiny_gguf import write_tiny_gguf

    path = tmp_path / "nopre.gguf"
    trained = tiny_gguf("llama")[3]
    monkey = pytest.MonkeyPatch()
    monkey.setattr(tg.GGUFWriter, "add_tokenizer_pre", lambda self, _: None)
    try:
        write_tiny_gguf(path, "llama", tokenizer=trained)
    finally:
        monkey.undo()
    with caplog.at_level("WARNING", logger="inductor_fuse.gguf.tokenizer"):
        tok = GGUFTokenizer.from_reader(read_gguf(str(path)), str(path))
    assert "nopre.gguf: no tokenizer.ggml.pre in the file: splitting text with GPT-2's regex" in caplog.text
    assert tok.decode(tok.encode("Hello world, 123!")) == "Hello world, 123!"


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
    pieces = tok.tokenize("Hi 日")
    assert pieces[0].startswith("\u2581")  # the space prefix
    assert pieces[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]  # 日 is not in the vocabulary: its UTF-8 bytes


def test_sentencepiece_without_space_prefix(tmp_path):
    # llama.cpp honours add_space_prefix = false (transformers' GGUF loader prepends "▁" anyway)
    from tiny_gguf import write_spm_gguf

    path = str(tmp_path / "nospace.gguf")
    write_spm_gguf(path, add_space_prefix=False)
    tok = GGUFTokenizer.from_reader(read_gguf(path), path)
    assert not tok.tokenize("The capital")[0].startswith("\u2581")
    for text in PROMPTS:
        assert tok.decode(tok.encode(text)) == text


# ---- SentencePiece: the real Gemma 3 file ("llama" model) ----


def merges_from_vocab(tokens: list[str], rank: list[float]) -> list[tuple[str, str]]:
    """The reference: the BPE merges a SentencePiece vocabulary implies (as transformers'
    `generate_merges` derives them): every split of a piece into two pieces, best (lowest `rank`)
    merged piece first; ties: longer left piece, longer right piece, then vocabulary order."""
    vocab = set(tokens)
    keyed = []
    for i, t in enumerate(tokens):
        for cut in range(len(t) - 1, 0, -1):
            if t[:cut] in vocab and t[cut:] in vocab:
                keyed.append(((rank[i], -cut, cut - len(t), i), t[:cut], t[cut:]))
    return [(left, right) for _, left, right in sorted(keyed)]


def reference_bpe(tokens, rank, special=(), added=(), unk=None, add_space_prefix=False) -> Tokenizer:
    """A `tokenizers` BPE over the derived merges, with the pre-/post-processing SentencePiece has."""
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = Tokenizer(
        models.BPE(
            vocab=vocab, merges=merges_from_vocab(tokens, rank), unk_token=unk, fuse_unk=True, byte_fallback=True
        )
    )
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False)
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    else:
        bpe.normalizer = normalizers.Replace(" ", SPM_SPACE)
    bpe.decoder = decoders.Sequence(steps)
    bpe.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in special])
    bpe.add_tokens([AddedToken(tokens[i], normalized=False, special=False) for i in added])
    return bpe


@pytest.mark.parametrize("add_space_prefix", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_sentencepiece_equals_bpe_over_derived_merges(ties, add_space_prefix):
    """Random vocabularies over a small alphabet (so that merges compete: "aaa" from "a"+"aa" or
    "aa"+"a", overlapping pairs), unique ranks or many ties, control and user-defined pieces, byte
    pieces for what the alphabet lacks: the same ids and text as the reference on random texts."""
    rng = random.Random(int(ties) * 2 + int(add_space_prefix))
    alphabet = ["a", "b", "c", SPM_SPACE, "é"]
    pieces = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))) for _ in range(400)})
    rng.shuffle(pieces)
    tokens = ["<unk>", "<s>", "</s>", "<ctl>"] + [f"<0x{b:02X}>" for b in range(256)] + alphabet + pieces + ["xy"]
    special, added = [1, 2, 3], [len(tokens) - 1]  # "xy" is user-defined: matched whole
    rank = [float(rng.randint(0, 30)) if ties else float(i) for i in range(len(tokens))]
    spm = SentencePieceBPE(tokens, rank, special=special, added=added, unk_id=0, add_space_prefix=add_space_prefix)
    ref = reference_bpe(tokens, rank, special, added, "<unk>", add_space_prefix)
    texts = ["", " ", "aaaa", "a aa aaa", "<s>ab</s>xyz<ctl>", "zz 日 q", "xy xyx"]
    texts += ["".join(rng.choice("abc é日xy") for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for text in texts:
        ids = ref.encode(text, add_special_tokens=False).ids
        assert spm.encode(text) == ids, text
        for skip in (True, False):
            assert spm.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text
        stream = spm.stream()
        assert "".join(stream.step(i) for i in ids) == spm.decode(ids), text


def test_sentencepiece_unknown_characters_and_bad_ids():
    tokens = ["<unk>", "a", "b", "ab"]
    spm = SentencePieceBPE(tokens, range(4), unk_id=0)  # no byte pieces: unknown characters are <unk>
    assert spm.encode("ab日本b") == [3, 0, 2]  # consecutive unknown characters fuse
    with pytest.raises(ValueError, match="no piece, no byte pieces and no <unk>"):
        SentencePieceBPE(tokens, range(4)).encode("日")
    with pytest.raises(ValueError, match="token id 4 is outside the vocabulary"):
        spm.decode([1, 4])
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        spm.stream().step(-1)
    # ids as a tensor's elements (generate's output, say): control tokens are still recognised
    ctl = SentencePieceBPE(["<unk>", "<s>", "a"], range(3), special=[1], unk_id=0)
    ids = torch.tensor([1, 2, 2])
    stream = ctl.stream()
    assert ctl.decode(ids) == "aa" and "".join(stream.step(i) for i in ids) == "aa"


def test_sentencepiece_stream_holds_incomplete_characters():
    tokens = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["a"]
    spm = SentencePieceBPE(tokens, range(len(tokens)), unk_id=0)
    ids = spm.encode("a日a")  # 日 = E6 97 A5: three byte pieces
    assert [spm.pieces[i] for i in ids] == ["a", "<0xE6>", "<0x97>", "<0xA5>", "a"]
    stream = spm.stream()
    assert [stream.step(i) for i in ids] == ["a", "", "", "日", "a"]
    assert spm.decode(ids[:3]) == "a\ufffd\ufffd"  # an incomplete character: one U+FFFD per byte
    cut = ids[:3] + ids[:1]  # the character cut off by a piece: the stream flushes the bytes, in place
    stream = spm.stream()
    assert "".join(stream.step(i) for i in cut) == spm.decode(cut) == "a\ufffd\ufffda"
    assert list(itertools.accumulate(stream.step(i) for i in spm.encode("é"))) == ["", "é"]


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


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # byte-level BPE (gpt2) vocabularies
def test_byte_level_bad_ids_are_refused_as_sentencepiece_does(tiny_gguf, arch):
    """tokenizers' decode drops an id it has no token for (a padded embedding's row, say): the text
    would silently lose it. Refused, as the SentencePiece path does."""
    from inductor_fuse.gguf import load_gguf

    _, tok = load_gguf(tiny_gguf(arch)[0], max_seq_len=8, progress=False)
    n = tok.vocab_size
    assert tok.decode([5, 6]) != ""
    with pytest.raises(ValueError, match=f"token id {n} is outside the vocabulary"):
        tok.decode([5, n])
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        tok.stream().step(-1)


def _tokenizer_file(path, kind="gpt2", tokens=("a", "b", "ab"), **kv):
    """A GGUF file with a tokenizer only (no tensors); kv: key suffix -> value (a list: an array)."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(kind)
    w.add_token_list(list(tokens))
    if kind == "gpt2":
        w.add_token_merges(["a b"])
    for key, value in kv.items():
        key = f"tokenizer.ggml.{key}"
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            {bool: w.add_bool, str: w.add_string, float: w.add_float32}.get(type(value), w.add_uint32)(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize(
    ("kind", "tokens", "kv", "error"),
    [
        ("gpt2", ("a", "b", "ab"), {"token_type": [1]}, r"token_type must hold one number per token \(3 tokens\)"),
        ("gpt2", ("a", "b", "ab"), {"token_type": "normal"}, r"token_type must hold one number per token"),
        ("gpt2", ("a", "b", "ab", "b"), {}, r"tokenizer.ggml.tokens 1 \('b'\) and 3 \('b'\) are the same token"),
        ("gpt2", ("a", "b", "ab", "\u0120a", " a"), {}, r"tokens 3 \('Ġa'\) and 4 \(' a'\) are the same token"),
        ("llama", ("<unk>", "a", "b", "ab"), {"scores": [0.0, -1.0]}, r"scores must hold one number per token"),
        ("gpt2", ("a", "b", "ab"), {"add_bos_token": "false"}, r"add_bos_token is 'false', not a bool"),
        ("gpt2", ("a", "b", "ab"), {"bos_token_id": 1.0}, r"bos_token_id is 1.0, not an integer"),
    ],
    ids=["types_short", "types_string", "duplicate_token", "same_bytes", "scores_short", "add_bos_string", "bos_float"],
)
def test_malformed_tokenizer_metadata_is_refused(tmp_path, kind, tokens, kv, error):
    # each of these loaded before and then encoded wrongly (control tokens lost, valid ids refused)
    # or failed at the first encode with a bare IndexError
    path = _tokenizer_file(tmp_path / "t.gguf", kind, tokens, **kv)
    with pytest.raises(GGUFLoadError, match=error):
        GGUFTokenizer.from_reader(read_gguf(path), path)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_well_formed_tokenizer_file_loads(tmp_path, kind):
    tokens = ("a", "b", "ab") if kind == "gpt2" else ("<unk>", "a", "b", "ab")
    kv = {"token_type": [1] * len(tokens), "bos_token_id": 0, "add_bos_token": False}
    if kind == "llama":
        kv["scores"] = [0.0] * len(tokens)
    path = _tokenizer_file(tmp_path / "t.gguf", kind, tokens, **kv)
    tok = GGUFTokenizer.from_reader(read_gguf(path), path)
    assert tok.vocab_size >= len(tokens)
