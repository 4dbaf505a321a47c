"""Token generation with a static KV cache, gpt-fast style.

    next_tok = prefill(model, prompt[None], torch.arange(len(prompt)))      # eager (any S)
    prefill_c = compile_prefill("inductor_fuse")                               # or compiled: one
    next_tok = prefill_c(model, prompt[None], torch.arange(len(prompt)))    #   graph for every S
    step = torch.compile(decode_one_token, backend="inductor_fuse", mode="reduce-overhead", fullgraph=True)
    next_tok = prefill_steps(step)(model, prompt[None], torch.arange(len(prompt)))  # or token by
                                                                               #   token through the step
    tokens = generate(model, prompt, 32, eos_ids=tok.eos_ids, decode_fn=step)
    step = GraphedStep(torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True))  # or one
                                                                               #   plain CUDA graph (CUDA)

`decode_one_token` is the only function meant for compilation: fixed shapes (S = 1), no host
sync, sampling on device (the exponential-race trick instead of torch.multinomial). Generate
within `settled_gc()` after the warm-up (see there).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .transformer import Transformer

log = logging.getLogger("inductor_fuse")


@contextlib.contextmanager
def settled_gc() -> Iterator[None]:
    """Within: the objects alive on entry sit in CPython's permanent generation (`gc.collect()`,
    then `gc.freeze()`), where the garbage collector does not walk them; on exit they go back to it
    (`gc.unfreeze()`).

    A compiled model leaves hundreds of thousands of long-lived objects behind (graphs, guards,
    kernels, the tokenizer's vocabulary: 832k tracked objects with Gemma-3-270M loaded and its
    decode step compiled). A full collection walks them all: 430-460 ms on the 2-core CPU machine.
    The interpreter starts one when its allocation counts say so, which can be between two tokens,
    where a decode step of Gemma-3-270M on a GPU takes about 0.6 ms. Within this block a collection walks
    only what was allocated since entry. Enter it after the warm-up (compile, CUDA-graph capture),
    around the generation. Process-wide, so `generate` does not enter it itself: the application
    does (examples/decode.py, the benchmarks). Frozen objects are still freed when their reference
    count drops to zero; unfreezing on exit lets the collector, and the interpreter's shutdown,
    reclaim their cycles.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _argmax_chunk(n: int) -> int | None:
    # the largest divisor of n in [256, 2048] that leaves >= 16 chunks, or None
    return next((c for c in range(2048, 255, -1) if n % c == 0 and n // c >= 16), None)


NAN_TOKEN = -1  # what `sample` returns for a row of logits that holds a NaN


class NaNLogitsError(RuntimeError):
    """`generate`: the model's logits turned NaN (broken weights or header values). `index`: the
    new token where they did; `tokens`: the new tokens before it."""

    def __init__(self, index: int, tokens: list[int]) -> None:
        super().__init__(
            f"generate: the model's logits are NaN at new token {index} (after {index} token(s): {tokens}); "
            "its weights or its header values (rope base, norm epsilon) are broken"
        )
        self.index, self.tokens = index, tokens


def argmax_last(x: Tensor) -> Tensor:
    """x.argmax(-1) (the first index of the maximum), NAN_TOKEN for a row that holds a NaN, in two
    stages, so that a long row such as a vocabulary of logits is reduced by many programs: Inductor
    never splits an argmax, and one program reading Gemma-3-270M's 262,144 logits took 38 us of a
    710 us decode step on an H200. Stage one: the maximum and its first index in each chunk of a
    divisor length; stage two: the first chunk holding the largest of those. (max and argmax
    propagate NaN: the maximum found is NaN exactly when the row holds one.)"""
    chunk = _argmax_chunk(x.shape[-1])
    if chunk is None:
        index = x.argmax(dim=-1, keepdim=True)
        best = x.gather(-1, index)
    else:
        maxima, where = x.unflatten(-1, (x.shape[-1] // chunk, chunk)).max(dim=-1)  # [..., C] each
        c = maxima.argmax(dim=-1, keepdim=True)
        index, best = c * chunk + where.gather(-1, c), maxima.gather(-1, c)
    return torch.where(best.isnan(), NAN_TOKEN, index).squeeze(-1)


def check_sampling(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise ValueError for sampling settings that mean nothing (``sample``'s arguments)."""
    if not 0.0 <= temperature < math.inf:
        raise ValueError(f"temperature must be finite and >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (None: no limit), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (None or 1: no limit), got {top_p}")


def sample(logits: Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """logits [B, V] -> token ids [B]. temperature 0: greedy (top_k, top_p unused). Else a draw from
    softmax(logits / temperature) restricted to the top_k most likely tokens and then to the
    smallest set of the most likely whose probability reaches top_p (nucleus sampling; the most
    likely token always stays), on the device, without a host sync. A row of logits holding a NaN
    (broken weights or header values) gives NAN_TOKEN, never a token."""
    if temperature <= 0.0:
        return argmax_last(logits)
    logits = logits.float()
    if top_k is not None:  # picked before the temperature divides: a large one rounds logits into ties
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = torch.where(logits < kth, float("-inf"), logits / temperature)
    else:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        ranked, order = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(ranked, dim=-1)
        # drop a token when the more likely ones before it already reach top_p
        drop = (p.cumsum(dim=-1) - p) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # argmax(p / Exp(1)) draws from p without a device->host sync
    return argmax_last(probs / torch.empty_like(probs).exponential_(1))


def prefill(
    model: Transformer,
    tokens: Tensor,
    input_pos: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    # tokens: [B, S], input_pos: [S] -> next token [B]; attention over the live cache prefix only
    live = int(input_pos.max()) + 1  # (one host read: prefill runs eagerly)
    logits = model(tokens, input_pos, last_only=True, live=live)
    return sample(logits[:, -1], temperature, top_k, top_p)


def prefill_logits(model: Transformer, tokens: Tensor, input_pos: Tensor, live: int, last: Tensor) -> Tensor:
    # tokens: [B, S], input_pos: [S], every position < live, last: [1] the row of the prompt's
    # last token -> its logits [B, V]
    return model(tokens, input_pos, live=live, logits_at=last)[:, -1]


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def compile_prefill(backend: str | Callable = "inductor_fuse", mode: str | None = None, **options) -> Callable:
    """`prefill` through torch.compile, with the same signature. Dynamic shapes: the prompt length
    and the live prefix are symbolic, so one graph serves every prompt of 2 or more tokens (Dynamo
    specializes a length of 1: a second graph); no recompile per length. The int4 matmuls of a
    prompt run the GEMM paths (`qlinear` picks by M at run time); the norms, rope and residual adds
    around them fuse as Inductor's kernels. `mode`, `options`: torch.compile's.

    mode="reduce-overhead" (CUDA graphs; with a callable backend, one made for that mode, e.g.
    `make_backend("reduce-overhead")`): a prompt is a few hundred launches, whose host cost is
    several times their GPU time on a small model; replaying a graph removes it. A graph is
    recorded per distinct shape, so the prompt is padded to a power-of-two length (>= 16) and the
    live prefix rounded up to a power of two where the cache has room: at most about
    log2(max_seq_len) lengths each. The pad tokens follow the prompt, in cache positions that the
    next steps overwrite before any query can see them (causal masks); where they would not fit in
    the cache, no padding."""
    graphs = mode == "reduce-overhead"
    if isinstance(backend, str) and mode is not None:
        options["mode"] = mode  # (a callable backend carries its mode)
    compiled = torch.compile(prefill_logits, backend=backend, dynamic=True, **options)

    def compiled_prefill(
        model: Transformer,
        tokens: Tensor,
        input_pos: Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        n = tokens.shape[1]
        end = int(input_pos.max()) + 1  # (one host read)
        last = torch.full((1,), n - 1, dtype=torch.long, device=tokens.device)
        if graphs:
            pad = max(16, _pow2(n)) - n
            if end + pad <= model.max_seq_len:
                tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], pad)], 1)
                input_pos = torch.cat([input_pos, torch.arange(end, end + pad, device=input_pos.device)])
                end += pad
            rounded = _pow2(end)  # (past the cache: exact; the whole cache would be a graph of its own)
            end = rounded if rounded <= model.max_seq_len else end
        return sample(compiled(model, tokens, input_pos, end, last), temperature, top_k, top_p)

    return compiled_prefill


def prefill_steps(decode_fn: Callable) -> Callable:
    """A prefill that feeds the prompt through `decode_fn` (the S = 1 decode step, e.g. the compiled
    one) one token at a time, with `prefill`'s signature. It compiles nothing of its own: a
    compiled prefill costs a compile of its own on first use (about a minute and a half on an H200
    for Gemma-3-270M with CUDA graphs, docs/decode.md), stepping costs one decode step per prompt
    token. The steps are launched back to back; nothing is read on the host."""

    def stepped_prefill(
        model: Transformer,
        tokens: Tensor,
        input_pos: Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        if tokens.shape[0] != 1:
            raise ValueError(f"prefill_steps: one sequence at a time (the decode step's batch), got {tokens.shape[0]}")
        token = None
        for i in range(tokens.shape[1]):
            # a [1, 1] token of strides (1, 1) and a [1] position, as generate() passes them: the
            # compiled step guards strides (a slice's clone keeps the prompt's)
            tok = tokens[:, i : i + 1].clone(memory_format=torch.contiguous_format)
            token = decode_fn(model, tok, input_pos[i : i + 1].clone(), temperature, top_k, **_top_p(top_p))
        if token is None:
            raise ValueError("prefill_steps: an empty prompt")
        return token

    return stepped_prefill


def decode_one_token(
    model: Transformer,
    token: Tensor,
    input_pos: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    # token: [B, 1], input_pos: [1] -> next token [B]
    logits = model(token, input_pos)
    return sample(logits[:, -1], temperature, top_k, top_p)


class GraphedStep:
    """A decode step (`decode_one_token`'s signature) replayed as one plain `torch.cuda.CUDAGraph`
    per model, token shape and sampling setting. CUDA only.

        step = GraphedStep(torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True))

    Give it a step compiled *without* CUDA graphs of its own (no `mode="reduce-overhead"`: a capture
    cannot hold another). The first call of a setting runs the step `warmup` times on a side stream
    (compiling it, where it is compiled), then records one call; every call copies the token and the
    position into the graph's own tensors and replays it. The host's cost of a step is then those two
    copies and one graph launch: no Dynamo guard evaluation and no CUDA-graph-tree bookkeeping, which
    `reduce-overhead` pays on every call (about 110-235 us a step measured on an H200 with a toy
    stack, against 18-30 for a plain replay: the end-to-end issue's figures).

    The returned token is the graph's output tensor: the next call overwrites it (read or copy it
    first, as `generate` does). The warm-up calls write the KV cache at the given position, as the
    replay then does with the same token.

    A graph reads the tensors it was recorded with, at their addresses: a weight changed in place is
    read as it now is by the graph, and by the step inside it as far as its compile lets it
    (`inductor_fuse` freezes weights: not seen, docs/robustness.md). What moves weights is checked on
    every call, cheaply: the model's first parameter (the same tensor at the same address:
    `model.to(dtype)`, `load_state_dict(..., assign=True)` and the like replace or move them all) and
    its first KV cache's address (`setup_caches`); where either changed, the model's graphs are
    dropped and one is recorded anew. A graph keeps the tensors it read alive (no replay reads freed memory), so a
    single weight replaced by another tensor, which that check does not see, leaves the graph on the
    old weight, never on garbage: record anew (`graphs.clear()`) after such surgery."""

    def __init__(self, decode_fn: Callable, warmup: int = 2):
        if warmup < 1:
            raise ValueError(f"GraphedStep: warmup must be >= 1 (the calls before recording), got {warmup}")
        self.decode_fn = decode_fn
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, token, position, output, the tensors it reads)

    def __call__(
        self,
        model: Transformer,
        token: Tensor,
        input_pos: Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        binding = _binding(model)
        key = (id(model), binding, tuple(token.shape), token.dtype, temperature, top_k, top_p)
        rec = self.graphs.get(key)
        if rec is None:  # (the graphs of this model's earlier tensors are dropped: they read those)
            self.graphs = {k: v for k, v in self.graphs.items() if k[0] != id(model) or k[1] == binding}
            rec = self.graphs[key] = self._record(model, token, input_pos, temperature, top_k, top_p)
        graph, tok, pos, out, _ = rec
        tok.copy_(token)
        pos.copy_(input_pos)
        graph.replay()
        return out

    def _record(self, model, token, input_pos, temperature, top_k, top_p):
        if token.device.type != "cuda":
            raise ValueError(f"GraphedStep: CUDA graphs need a CUDA model and token, got {token.device}")
        tok, pos = token.clone(), input_pos.clone()
        kw = _top_p(top_p)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.decode_fn(model, tok, pos, temperature, top_k, **kw)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.decode_fn(model, tok, pos, temperature, top_k, **kw)
        read = [t.detach() for t in (*model.parameters(), *model.buffers())]  # (their storage, kept alive)
        return graph, tok, pos, out, read


def _binding(model) -> tuple:
    """What GraphedStep checks on each call for a model's tensors having moved: the first parameter's
    identity and address, and the first layer's KV cache address (0 for a model without)."""
    first = next(model.parameters(), None)
    where = (id(first), first.data_ptr()) if first is not None else (0, 0)
    try:
        cache = model.layers[0].attention.kv_cache.k_cache.data_ptr()
    except (AttributeError, IndexError, TypeError):
        cache = 0
    return (*where, cache)


def _top_p(top_p: float | None) -> dict:
    """top_p as the keyword a step or prefill function gets, only when set: a function written for
    (model, token, input_pos, temperature, top_k) keeps working without it."""
    return {} if top_p is None else {"top_p": top_p}


class _HostTokens:
    """Tokens on their way to the host, read one step behind the device (a FIFO of at most two).

    On CUDA, `push(token)` starts a non-blocking copy into pinned memory and records an event;
    `pop()` returns the oldest pushed token, waiting for its event only -- its copy and the step
    that produced it -- not for a step launched since. So the host reads token t while step t + 1
    runs, and the GPU does not idle on the host's read. Elsewhere (CPU) a push keeps the tensor
    and a pop reads it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.bufs = [torch.empty((), dtype=torch.long, pin_memory=True) for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]
        self.tensors: list[Tensor | None] = [None, None]
        self.pushed = 0
        self.popped = 0

    def push(self, token: Tensor) -> None:
        if self.pushed - self.popped == 2:
            raise RuntimeError("_HostTokens: pop before pushing a third token")
        i = self.pushed % 2
        if self.cuda:
            self.bufs[i].copy_(token[0], non_blocking=True)
            self.events[i].record()
        else:
            self.tensors[i] = token
        self.pushed += 1

    def pop(self) -> int:
        i = self.popped % 2
        self.popped += 1
        if self.cuda:
            self.events[i].synchronize()
            return int(self.bufs[i])
        return int(self.tensors[i][0])


class DeviceStepTimer:
    """The device's own time of each decode step and the host's wait for each token (opt-in, CUDA).

    A timing event before the step's launch and one after it, read once generation is over
    (`times_ms`: one synchronize): the device's time from reaching the first to the second. Where
    the host is the slower, that includes the device's wait inside the step for the host's launch,
    so it rises with the host's time; what tells the two apart is `wait_ms`, the host's time in
    reading each token (`generate` brackets the read with `waiting()` / `read()`): near zero when
    the host sets the pace, most of a step when the device does."""

    def __init__(self) -> None:
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.waits: list[float] = []
        self._t = 0.0

    def start(self) -> None:
        self.events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
        self.events[-1][0].record()

    def stop(self) -> None:
        self.events[-1][1].record()

    def times_ms(self) -> list[float]:
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in self.events]

    def waiting(self) -> None:
        self._t = time.perf_counter()

    def read(self) -> None:
        self.waits.append(time.perf_counter() - self._t)

    def wait_ms(self) -> list[float]:
        return [1e3 * w for w in self.waits]


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    decode_fn: Callable = decode_one_token,
    prefill_fn: Callable = prefill,
    temperature: float = 0.0,
    top_k: int | None = None,
    on_token: Callable[[int], None] | None = None,
    top_p: float | None = None,
    step_timer: DeviceStepTimer | None = None,
) -> list[int]:
    """Greedy (or sampled) continuation of one prompt: the new tokens, the EOS included if hit.

    on_token(id) is called as each token is known (for streaming). Stops after max_new_tokens,
    at an EOS, or when the KV cache is full: the prompt and the new tokens but the last need a
    position each (a WARNING says so when that cuts max_new_tokens). temperature, top_k, top_p:
    `sample`'s (checked first: ValueError); top_p reaches decode_fn and prefill_fn as a keyword,
    only when set. ValueError for an empty prompt, one longer than the cache, or a model whose
    cache was set up for more than one sequence; NaNLogitsError (a RuntimeError) when the model's
    logits turn NaN (`sample` gives NAN_TOKEN: broken weights or header values), at the token where
    they did.

    The host reads token t after step t + 1 has been launched (`_HostTokens`): the device never
    waits for the host between steps. A step that turns out to follow the EOS has then run for
    nothing (its KV-cache write lies past the returned tokens); no step runs past
    max_new_tokens or the cache. step_timer (`DeviceStepTimer`, CUDA): its start() and stop() bracket
    each decode step, its waiting() and read() each read of a token on the host.
    """
    check_sampling(temperature, top_k, top_p)
    device = model.norm.weight.device
    prompt = list(prompt)
    n, cache = len(prompt), model.max_seq_len
    if not prompt:
        raise ValueError("generate: an empty prompt (give at least one token, e.g. the BOS)")
    if n > cache:
        raise ValueError(f"generate: a prompt of {n} tokens does not fit the KV cache of {cache} positions")
    batch = model.layers[0].attention.kv_cache.k_cache.shape[0] if model.layers else 1
    if batch != 1:
        raise ValueError(f"generate: one sequence at a time; the KV cache is set up for {batch}: setup_caches(1, ...)")
    if max_new_tokens <= 0:
        return []
    if n + max_new_tokens - 1 > cache:  # the last new token needs no position
        log.warning(
            "generate: the KV cache of %d positions holds the prompt (%d tokens) and %d new tokens, not the %d asked "
            "for (setup_caches with a longer max_seq_len)",
            cache,
            n,
            cache - n + 1,
            max_new_tokens,
        )
        max_new_tokens = cache - n + 1
    prompt_t = torch.tensor([prompt], dtype=torch.long, device=device)
    token = prefill_fn(model, prompt_t, torch.arange(n, device=device), temperature, top_k, **_top_p(top_p))
    out: list[int] = []
    input_pos = torch.tensor([n], dtype=torch.long, device=device)
    eos = set(eos_ids)
    host = _HostTokens(device)
    host.push(token)
    while True:
        if host.pushed < max_new_tokens:  # launch the next step before reading the last token
            # (a NAN_TOKEN read later stops the loop; the step it feeds reads token 0 instead)
            if step_timer is not None:
                step_timer.start()
            token = decode_fn(model, token.view(1, 1).clamp(min=0), input_pos, temperature, top_k, **_top_p(top_p))
            if step_timer is not None:
                step_timer.stop()
            input_pos += 1
            host.push(token)
        if step_timer is not None:
            step_timer.waiting()
        t = host.pop()
        if step_timer is not None:
            step_timer.read()
        if t == NAN_TOKEN:
            raise NaNLogitsError(len(out), out)
        out.append(t)
        if on_token is not None:
            on_token(t)
        if t in eos or len(out) >= max_new_tokens:
            return out
