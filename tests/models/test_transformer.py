"""The plain Transformer with float weights: KV-cache decoding equals full forwards, the sliding
window is a mask, generation stops where it should, and the S=1 step compiles whole."""

import dataclasses

import pytest
import torch

from inductor_fuse.models import ModelArgs, Transformer, transformer
from inductor_fuse.models.generate import (
    NAN_TOKEN,
    GraphedStep,
    NaNLogitsError,
    argmax_last,
    decode_one_token,
    generate,
    prefill,
    prefill_steps,
    sample,
)

LLAMA = ModelArgs(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=96)
GEMMA = dataclasses.replace(
    LLAMA,
    n_layers=6,
    act="gelu_tanh",
    qk_norm=True,
    sandwich_norm=True,
    embed_scale=True,
    sliding_window=3,
    sliding_window_pattern=6,
    query_pre_attn_scalar=24.0,
    tie_embeddings=True,
)
QWEN2 = dataclasses.replace(LLAMA, qkv_bias=True, n_kv_heads=1)
FAMILIES = {"llama": LLAMA, "gemma3": GEMMA, "qwen2": QWEN2}


def build(args: ModelArgs, max_seq_len: int = 32, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, p.shape[-1] ** -0.5 if p.ndim == 2 else 0.2).add_(1.0 if p.ndim == 1 else 0.0)
    model.setup_caches(1, max_seq_len)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_incremental_decode_equals_full_forward(family):
    model = build(FAMILIES[family])
    tokens = torch.randint(0, 97, (1, 12))
    full = model(tokens, torch.arange(12))
    model(tokens[:, :5], torch.arange(5))  # prefill 5, then one at a time
    steps = [model(tokens[:, i : i + 1], torch.tensor([i])) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_live_prefix_attention_equals_the_whole_cache(family):
    """forward(..., live=L) attends over cache positions < L only: a prompt in two chunks (5, then
    7 more) gives the logits of the whole-cache forward, and the cache holds the same keys."""
    whole, prefix = build(FAMILIES[family]), build(FAMILIES[family])
    tokens = torch.randint(0, 97, (1, 12))
    want = torch.cat([whole(tokens[:, :5], torch.arange(5)), whole(tokens[:, 5:], torch.arange(5, 12))], 1)
    got = torch.cat(
        [prefix(tokens[:, :5], torch.arange(5), live=5), prefix(tokens[:, 5:], torch.arange(5, 12), live=12)], 1
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(whole.layers, prefix.layers):
        torch.testing.assert_close(b.attention.kv_cache.k_cache, a.attention.kv_cache.k_cache)
    for bad in (0, 33):
        with pytest.raises(ValueError, match="live"):
            prefix(tokens[:, :1], torch.arange(1), live=bad)


@torch.no_grad()
def test_last_only():
    model = build(LLAMA)
    tokens = torch.randint(0, 97, (1, 7))
    torch.testing.assert_close(model(tokens, torch.arange(7), last_only=True), model(tokens, torch.arange(7))[:, -1:])


@torch.no_grad()
def test_sliding_window_limits_what_a_token_sees():
    """All-sliding layers (window 3, 2 layers): position p sees tokens p-4 .. p, nothing earlier."""
    args = dataclasses.replace(GEMMA, n_layers=2, sliding_window_pattern=7)  # layers 0, 1 both sliding
    model = build(args)
    a = torch.randint(0, 97, (1, 10))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % 97
    la, lb = model(a, torch.arange(10)), model(b, torch.arange(10))
    assert not torch.allclose(la[:, 4], lb[:, 4])  # within reach: 2 layers x (window - 1) = 4
    torch.testing.assert_close(la[:, 5:], lb[:, 5:], atol=0, rtol=0)


def test_global_layers_see_everything():
    assert [GEMMA.is_sliding(i) for i in range(6)] == [True] * 5 + [False]
    assert not any(LLAMA.is_sliding(i) for i in range(2))


def test_model_args_validation():
    with pytest.raises(ValueError, match="act"):
        dataclasses.replace(LLAMA, act="relu")
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        dataclasses.replace(LLAMA, n_kv_heads=3)
    with pytest.raises(ValueError, match="sliding_window"):
        dataclasses.replace(LLAMA, sliding_window_pattern=6)
    with pytest.raises(ValueError, match="rope_freq_factors"):
        dataclasses.replace(LLAMA, rope_freq_factors=(1.0, 2.0))


def test_rope_freq_factors_change_frequencies():
    a = build(LLAMA)
    b = build(dataclasses.replace(LLAMA, rope_freq_factors=(1.0,) * 4 + (8.0,) * 4))
    assert torch.equal(a.rope_global[..., :4], b.rope_global[..., :4])
    assert not torch.equal(a.rope_global[..., 4:8], b.rope_global[..., 4:8])


@pytest.mark.parametrize("n", [97, 4096, 128256, 262144])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_last_is_the_first_index_of_the_maximum(n, dtype):
    """The two-stage argmax returns what argmax does, ties included (values drawn from a few
    levels, so every row has many maxima); compiled too, at the two real vocabulary sizes."""
    torch.manual_seed(n)
    x = torch.randint(-3, 4, (5, n)).to(dtype)
    x[1, -1] = 10  # the maximum in the last chunk
    x[2, 0] = 10  # in the first
    x[3] = 0  # a row of one value: index 0
    want = x.argmax(-1)
    assert torch.equal(argmax_last(x), want)
    if n >= 128256 and dtype == torch.bfloat16:
        assert torch.equal(torch.compile(argmax_last)(x), want)
    assert torch.equal(argmax_last(x[0]), want[0])


def test_generate_stops_at_eos_and_cache_end():
    model = build(LLAMA, max_seq_len=16)
    prompt = [1, 2, 3]
    out = generate(model, prompt, 10)
    assert len(out) == 10
    assert generate(model, prompt, 10, eos_ids=[out[2]]) == out[:3]
    # the KV cache holds 16 positions: the prompt's 3 and 13 steps' (the last new token needs none)
    assert len(generate(model, prompt, 100)) == 16 - 3 + 1


def test_generate_says_what_the_cache_cuts_and_refuses_what_cannot_run(caplog):
    model = build(LLAMA, max_seq_len=16)
    with caplog.at_level("WARNING", logger="inductor_fuse"):
        assert len(generate(model, [1, 2, 3], 14)) == 14  # fits: no warning
        assert not caplog.records
        assert len(generate(model, [1, 2, 3], 20)) == 14
    assert "holds the prompt (3 tokens) and 14 new tokens, not the 20" in caplog.text
    assert len(generate(model, list(range(1, 17)), 5)) == 1  # a full cache: the prefill's token only
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [], 4)
    with pytest.raises(ValueError, match="a prompt of 17 tokens does not fit the KV cache of 16"):
        generate(model, list(range(1, 18)), 4)
    model.setup_caches(2, 16)
    with pytest.raises(ValueError, match="one sequence at a time"):
        generate(model, [1, 2], 4)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_nan_logits_stop_generation_with_an_error(temperature):
    """Broken weights (here a NaN in the output head) make NaN logits: `sample` returns NAN_TOKEN,
    never a token (an argmax of NaN logits read as token 0 before), and generate raises."""
    model = build(LLAMA, max_seq_len=16)
    logits = torch.zeros(2, 97)
    logits[1, 5] = float("nan")
    assert sample(logits, temperature).tolist()[1] == NAN_TOKEN
    with torch.no_grad():
        model.output.weight[3, 0] = float("nan")  # NaN logits wherever the final hidden state's feature 0 is nonzero
    with pytest.raises(NaNLogitsError, match="logits are NaN at new token 0"):
        generate(model, [1, 2, 3], 5, temperature=temperature)


def test_generate_reads_tokens_one_step_behind():
    """The host reads token t after step t + 1 is launched: streaming sees every token in order,
    at most one step runs past an EOS, and none past max_new_tokens or the cache."""
    model = build(LLAMA, max_seq_len=16)
    prompt = [1, 2, 3]
    launched, streamed = [], []

    def step(model, token, input_pos, temperature, top_k):
        launched.append(int(input_pos))
        return decode_one_token(model, token, input_pos, temperature, top_k)

    out = generate(model, prompt, 10, decode_fn=step, on_token=streamed.append)
    assert streamed == out and len(out) == 10
    assert launched == list(range(3, 3 + 9))  # token 0 comes from the prefill: 9 steps, no more
    launched.clear()
    assert generate(model, prompt, 10, eos_ids=[out[2]], decode_fn=step) == out[:3]
    assert launched == [3, 4, 5]  # the step after the EOS ran before the EOS was read, and no other
    launched.clear()
    # a cache of 16: the prompt's 3 positions and 13 steps' (3..15); the 14th token needs none
    assert len(generate(model, prompt, 100, decode_fn=step)) == 14 and max(launched) == 15


def test_generate_brackets_each_decode_step_with_the_step_timer():
    """step_timer's start() and stop() around each decode step, waiting() and read() around each
    read of a token on the host (DeviceStepTimer records CUDA events and host times there; this
    stand-in records the order of calls)."""
    model = build(LLAMA, max_seq_len=16)
    calls = []

    class Timer:
        def start(self):
            calls.append("start")

        def stop(self):
            calls.append("stop")

        def waiting(self):
            calls.append("waiting")

        def read(self):
            calls.append("read")

    def step(model, token, input_pos, temperature, top_k):
        calls.append("step")
        return decode_one_token(model, token, input_pos, temperature, top_k)

    out = generate(model, [1, 2, 3], 6, decode_fn=step, step_timer=Timer())
    # token 0 from the prefill, then 5 steps: each launched before the token ahead of it is read
    assert calls == ["start", "step", "stop", "waiting", "read"] * 5 + ["waiting", "read"]
    assert out == generate(model, [1, 2, 3], 6)


def test_graphed_step_needs_cuda_and_a_warmup():
    model = build(LLAMA, max_seq_len=16)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        GraphedStep(decode_one_token)(model, torch.tensor([[1]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedStep(decode_one_token, warmup=0)


def test_graphed_step_sees_moved_weights_and_a_new_cache():
    """What GraphedStep checks on each call (generate._binding): unchanged by in-place writes to the
    weights, changed by weights moved or replaced and by a new KV cache."""
    from inductor_fuse.models.generate import _binding

    model = build(LLAMA, max_seq_len=16)
    before = _binding(model)
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # in place: the graph sees it
        model.load_state_dict(model.state_dict())  # copies in place
    assert _binding(model) == before
    model.to(torch.float64)  # moved
    assert _binding(model) != before
    moved = _binding(model)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)  # replaced
    assert _binding(model) != moved
    replaced = _binding(model)
    model.setup_caches(1, 32)
    assert _binding(model)[:2] == replaced[:2] and _binding(model)[2] != replaced[2]
    assert _binding(torch.nn.Module()) == (0, 0, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor_fuse"])
def test_graphed_step_gives_the_steps_tokens_on_cuda(compiled):
    """GraphedStep (one plain CUDA graph per setting) generates the greedy tokens of the step it
    replays, through a stepped prefill; a sampling setting gets its own graph, whose replays draw the
    same tokens from the same seed; a new KV cache (setup_caches) or moved weights drop the model's
    graphs and record one anew, with the same tokens."""
    model = build(GEMMA, max_seq_len=32).cuda()
    base = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True) if compiled else decode_one_token
    step = GraphedStep(base)
    prompt = [5, 17, 3, 60]

    def run(fn, **kw):
        torch.manual_seed(1)
        return generate(model, prompt, 12, decode_fn=fn, prefill_fn=prefill_steps(fn), **kw)

    want = run(base)
    assert run(step) == want and run(step) == want
    assert len(step.graphs) == 1
    sampled = run(step, temperature=0.8, top_k=20)  # records (its warm-up draws), then replays
    assert len(step.graphs) == 2 and all(0 <= t < LLAMA.vocab_size for t in sampled)
    assert run(step, temperature=0.8, top_k=20) == run(step, temperature=0.8, top_k=20)  # same seed, same draws
    model.setup_caches(1, 48)  # a new KV cache: the model's two graphs dropped, one recorded
    assert run(step) == run(base) == want and len(step.graphs) == 1
    recorded = next(iter(step.graphs.values()))[0]
    with torch.no_grad():  # weights moved (a dtype round trip): recorded anew, the same tokens
        model.to(torch.float64).to(torch.float32)
    assert run(step) == run(base) == want and len(step.graphs) == 1
    assert next(iter(step.graphs.values()))[0] is not recorded


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_setup_caches_counts_what_it_allocates_and_refuses_what_does_not_fit(family, monkeypatch):
    args = {"llama": LLAMA, "gemma": GEMMA}[family]
    model = build(args, max_seq_len=40)
    n_masks = 2 if args.sliding_window_pattern else 1
    held = sum(b.nbytes for name, b in model.named_buffers() if name.endswith(transformer._CACHE_BUFFERS))
    # the buffers, plus the [S, S] temporary of the sliding mask
    assert transformer.cache_bytes(args, 1, 40, torch.float32) == held + (n_masks - 1) * 40 * 40
    kv = model.layers[0].attention.kv_cache.kv
    monkeypatch.setattr(transformer, "free_bytes", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(transformer.CacheTooLarge, match=r"1 x 100000 positions need \d+\.\d GiB on cpu"):
        model.setup_caches(1, 100_000)
    assert model.max_seq_len == 40 and model.layers[0].attention.kv_cache.kv is kv  # left as it was
    model.setup_caches(1, 48)  # fits in the MiB plus the caches it replaces
    assert model.max_seq_len == 48


def test_sample():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample(logits).tolist() == [1, 0]
    torch.manual_seed(0)
    draws = torch.stack([sample(logits, temperature=1.0, top_k=1) for _ in range(20)])
    assert (draws == torch.tensor([1, 0])).all()  # top_k=1 is greedy
    draws = torch.stack([sample(logits, temperature=100.0) for _ in range(200)])
    assert len(set(draws[:, 0].tolist())) == 3
    # top_k picks before the temperature divides: 1e39 / float32 rounds every logit to 0, a tie
    draws = torch.stack([sample(logits, temperature=1e39, top_k=1) for _ in range(20)])
    assert (draws == torch.tensor([1, 0])).all()


def test_sample_top_p_draws_from_the_nucleus_in_proportion():
    """Probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled vocabulary order): top_p 0.75 keeps the
    two most likely (0.5 < 0.75 <= 0.8), drawn 5 : 3; top_p 0.5 keeps the first alone (greedy);
    top_p 1.0 and None keep all four; top_k applies first."""
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = p.log()[None].repeat(2, 1)
    torch.manual_seed(1)
    n = 4000
    draws = torch.stack([sample(logits, temperature=1.0, top_p=0.75) for _ in range(n)])
    assert set(draws.flatten().tolist()) == {1, 3}
    share = (draws == 1).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03, share  # 0.625; one sigma of 8,000 draws is 0.0054
    assert (torch.stack([sample(logits, temperature=1.0, top_p=0.5) for _ in range(50)]) == 1).all()
    for top_p in (1.0, None):
        seen = torch.stack([sample(logits, temperature=1.0, top_p=top_p) for _ in range(400)])
        assert set(seen.flatten().tolist()) == {0, 1, 2, 3}
    both = torch.stack([sample(logits, temperature=1.0, top_k=3, top_p=0.95) for _ in range(400)])
    assert set(both.flatten().tolist()) == {0, 1, 3}  # top_k 3 drops 0.05; 0.95 of what is left keeps all 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature must be finite"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_generate_refuses_meaningless_sampling(kwargs, message):
    model = build(FAMILIES["llama"])
    with pytest.raises(ValueError, match=message):
        generate(model, [5, 7], 4, **kwargs)


def test_generate_passes_top_p_to_the_step_only_when_set():
    model = build(FAMILIES["llama"])
    seen = []

    def old_step(model, token, input_pos, temperature, top_k):  # written before top_p existed
        return decode_one_token(model, token, input_pos, temperature, top_k)

    def step(model, token, input_pos, temperature, top_k, top_p=None):
        seen.append(top_p)
        return decode_one_token(model, token, input_pos, temperature, top_k, top_p)

    assert len(generate(model, [5, 7], 4, decode_fn=old_step)) == 4
    torch.manual_seed(2)
    assert len(generate(model, [5, 7], 4, decode_fn=step, temperature=0.8, top_p=0.9)) == 4
    assert seen == [0.9] * 3  # three steps after the prefill's token


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_compiled_step_equals_eager_without_recompiles(family):
    model = build(FAMILIES[family])
    prompt = [5, 7, 11, 13]
    eager = generate(model, prompt, 8)
    step = torch.compile(decode_one_token, backend="inductor", fullgraph=True)
    generate(model, prompt, 2, decode_fn=step)  # compiles for this model (another may have compiled before)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert generate(model, prompt, 8, decode_fn=step) == eager


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_stepped_prefill_equals_the_prefill(family):
    """prefill_steps(step) runs the prompt one token at a time through the decode step: the same
    next token and the same KV cache as the whole-prompt prefill, one step per prompt token."""
    whole, stepped = build(FAMILIES[family]), build(FAMILIES[family])
    tokens = torch.randint(0, 97, (1, 9))
    pos = torch.arange(9)
    calls = []

    def step(model, token, input_pos, temperature, top_k):
        calls.append((token.shape, token.stride(), input_pos.tolist()))
        return decode_one_token(model, token, input_pos, temperature, top_k)

    assert torch.equal(prefill_steps(step)(stepped, tokens, pos), prefill(whole, tokens, pos))
    assert calls == [(torch.Size([1, 1]), (1, 1), [i]) for i in range(9)]  # strides as generate()'s
    for a, b in zip(whole.layers, stepped.layers, strict=True):
        torch.testing.assert_close(b.attention.kv_cache.k_cache, a.attention.kv_cache.k_cache, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.attention.kv_cache.v_cache, a.attention.kv_cache.v_cache, atol=1e-5, rtol=1e-5)
    assert generate(stepped, tokens[0].tolist(), 6, prefill_fn=prefill_steps(decode_one_token)) == generate(
        whole, tokens[0].tolist(), 6
    )


def test_stepped_prefill_refuses_a_batch_or_an_empty_prompt():
    model = build(LLAMA)
    run = prefill_steps(decode_one_token)
    with pytest.raises(ValueError, match="one sequence"):
        run(model, torch.zeros(2, 3, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="empty prompt"):
        run(model, torch.zeros(1, 0, dtype=torch.long), torch.arange(0))
