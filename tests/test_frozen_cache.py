"""The frozen-graph cache (inductor_fuse/frozen_cache.py): a warm start in another process skips AOT,
the rules and freezing, and still runs each model with its own weights, its own KV cache and the
rewrites the cold compile made. Compared against eager PyTorch on the same model.

The cross-process tests run fresh interpreters on a cache directory of their own (as a user's
second run meets the first one's cache); the in-process ones point Inductor at a fresh directory
with TORCHINDUCTOR_CACHE_DIR, which Inductor reads on every lookup.
"""

import pickle

import pytest
import torch
from numerics import rel_err
from test_backend import run_script
from toy_models import TinyLlama

import inductor_fuse
from inductor_fuse import config, frozen_cache

_real_cache_key = frozen_cache.cache_key

# The scripts' model: a small Transformer with its own random weights per seed, on DEVICE.
MAKE_MODEL = """
    import json, torch
    from numerics import rel_err
    import inductor_fuse
    from inductor_fuse.models import ModelArgs, Transformer

    def make_model(seed, max_seq_len):
        args = ModelArgs(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=96)
        torch.manual_seed(seed)
        model = Transformer(args)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, p.shape[-1] ** -0.5 if p.ndim == 2 else 0.2).add_(1.0 if p.ndim == 1 else 0.0)
        model.setup_caches(1, max_seq_len)
        return model.eval().to("DEVICE")
"""

DECODE_SCRIPT = (
    MAKE_MODEL
    + """
    from inductor_fuse.models.generate import prefill

    tokens = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(4)).to("DEVICE")
    out = {}
    for seed in SEEDS:  # no torch._dynamo.reset(): each instance recompiles through its identity guards
        model = make_model(seed, 16)
        step = torch.compile(model, backend="inductor_fuse", fullgraph=True, mode=MODE)
        errs, logits = [], []
        with torch.no_grad():
            prefill(model, tokens[:, :4], torch.arange(4, device="DEVICE"))
            for p in range(4, 12):  # each step reads the k/v the steps before it wrote into the cache
                tok, pos = tokens[:, p : p + 1], torch.tensor([p], device="DEVICE")
                k_before = model.layers[0].attention.kv_cache.k_cache.clone()
                got = step(tok, pos)
                k_compiled = model.layers[0].attention.kv_cache.k_cache.clone()
                model.layers[0].attention.kv_cache.k_cache.copy_(k_before)
                want = model(tok, pos)  # eager; writes the same k/v again
                errs.append(rel_err(got, want))
                errs.append(rel_err(k_compiled, model.layers[0].attention.kv_cache.k_cache))
                logits.append(got[0, -1, :8].tolist())
        rep = inductor_fuse.last_report()
        out[seed] = {"errs": errs, "cache": rep.frozen_cache, "counts": rep.counts, "logits": logits,
                     "notes": rep.notes}
    print(json.dumps(out))
"""
)


@pytest.mark.parametrize(
    "device, mode",
    [
        ("cpu", None),
        pytest.param("cuda", None, marks=pytest.mark.gpu),
        pytest.param("cuda", "reduce-overhead", marks=pytest.mark.gpu),  # the warm graph under CUDA graph trees
    ],
)
def test_decode_warm_start_with_other_weights(tmp_path, device, mode):
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    script = DECODE_SCRIPT.replace("DEVICE", device).replace("MODE", repr(mode))
    cold = run_script(script.replace("SEEDS", "[0]"), env)
    warm = run_script(script.replace("SEEDS", "[1, 0]"), env)
    print("cold", cold, "\nwarm", warm)
    assert cold["0"]["cache"] == "saved", cold
    for seed in ("1", "0"):
        assert warm[seed]["cache"] == "hit", warm[seed]["notes"]
        # logits and the written KV cache; CUDA: int8 activations can round one level apart (test_frozen_weights)
        assert max(warm[seed]["errs"]) < (1e-4 if device == "cpu" else 2e-3), warm[seed]["errs"]
        assert warm[seed]["counts"] == cold["0"]["counts"], (warm[seed]["counts"], cold["0"]["counts"])
    assert cold["0"]["counts"]["siblings"] == 2 and cold["0"]["counts"]["glu"] == 2, cold["0"]["counts"]
    assert rel_err(torch.tensor(warm["0"]["logits"]), torch.tensor(cold["0"]["logits"])) < 1e-5
    assert rel_err(torch.tensor(warm["1"]["logits"]), torch.tensor(warm["0"]["logits"])) > 0.1  # other weights


PREFILL_SCRIPT = (
    MAKE_MODEL
    + """
    from inductor_fuse import frozen_cache
    from inductor_fuse.models.generate import prefill_logits

    keys, key = [], frozen_cache.cache_key
    frozen_cache.cache_key = lambda *a: keys.append(key(*a)) or keys[-1]  # one per backend call
    out = {}
    for seed in SEEDS:
        model = make_model(seed, 32)
        # as compile_prefill compiles it: dynamic shapes, one graph for every prompt length >= 2
        run = torch.compile(prefill_logits, backend="inductor_fuse", dynamic=True)
        errs, caches, compiles = [], [], []
        with torch.no_grad():
            for n in LENGTHS:
                tokens = torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(n)).to("DEVICE")
                pos, last = torch.arange(n, device="DEVICE"), torch.tensor([n - 1], device="DEVICE")
                got = run(model, tokens, pos, n, last)
                want = prefill_logits(model, tokens, pos, n, last)  # eager
                errs.append(rel_err(got, want))
                caches.append(inductor_fuse.last_report().frozen_cache)
                compiles.append(len(keys))
        out[seed] = {"errs": errs, "caches": caches, "compiles": compiles, "logits": want[0, :8].tolist()}
    print(json.dumps(out))
"""
)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_prefill_warm_start_at_other_lengths(tmp_path, device):
    # A compiled prefill (symbolic prompt length and live prefix): the second process starts warm at
    # lengths the first never ran, each model with its own weights, and compiles nothing more.
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    script = PREFILL_SCRIPT.replace("DEVICE", device)
    cold = run_script(script.replace("SEEDS", "[0]").replace("LENGTHS", "(5, 9)"), env)
    warm = run_script(script.replace("SEEDS", "[1, 0]").replace("LENGTHS", "(13, 6, 21)"), env)
    print("cold", cold, "\nwarm", warm)
    assert cold["0"]["caches"] == ["saved"] * 2, cold
    tol = 1e-4 if device == "cpu" else 2e-3
    for seed in ("1", "0"):
        assert warm[seed]["caches"] == ["hit"] * 3, warm[seed]
        assert len(set(warm[seed]["compiles"])) == 1, warm[seed]  # compiled at the first length only
        assert max(warm[seed]["errs"]) < tol, warm[seed]["errs"]
    assert max(cold["0"]["errs"]) < tol, cold
    assert rel_err(torch.tensor(warm["1"]["logits"]), torch.tensor(warm["0"]["logits"])) > 0.1  # other weights


QUANT_SCRIPT = """
    import json, torch
    from numerics import rel_err
    from toy_models import TinyLlama
    import inductor_fuse
    x = torch.randn(1, 3, 256, generator=torch.Generator().manual_seed(2))
    out = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = TinyLlama(n_layers=1, dim=256, n_heads=4, n_kv_heads=2, hidden=256).eval()
        inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt="q4_k"))
        with torch.no_grad():
            got = torch.compile(model, backend="inductor_fuse")(x)
            err = rel_err(got, model(x))
        rep = inductor_fuse.last_report()
        out[seed] = {"err": err, "cache": rep.frozen_cache, "counts": rep.counts, "notes": rep.notes}
    print(json.dumps(out))
"""


def test_quantized_warm_start_with_other_weights(tmp_path):
    # CPU: the dequant_cpu rule dequantizes each frozen weight at compile time: a fold the warm start re-runs.
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    cold = run_script(QUANT_SCRIPT.replace("SEEDS", "[0]"), env)
    warm = run_script(QUANT_SCRIPT.replace("SEEDS", "[1]"), env)
    print("cold", cold, "\nwarm", warm)
    assert cold["0"]["cache"] == "saved", cold
    assert warm["1"]["cache"] == "hit", warm
    assert warm["1"]["err"] < 1e-5, warm
    assert warm["1"]["counts"] == cold["0"]["counts"], (warm, cold)


def compile_once(model, x):
    with torch.no_grad():
        got = torch.compile(model, backend="inductor_fuse")(x)
        return got, model(x), inductor_fuse.last_report()


class CacheProbe(TinyLlama):
    """TinyLlama under a forward of its own: Dynamo keeps its automatic-dynamic state per code object,
    and other tests of the suite call TinyLlama's forward with other shapes, after which Dynamo traces
    it with symbolic shapes, which the cache does not take."""

    def forward(self, x):
        return super().forward(x)


def fresh_model(seed: int):
    torch.manual_seed(seed)
    return CacheProbe(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden=48).eval()


X = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(5))


def test_in_process_hit_uses_the_new_models_weights(tmp_path, monkeypatch):
    # In one process Dynamo's identity guards make a second instance recompile: the backend's
    # warm start then comes from the entry the first compile saved.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    got0, want0, rep0 = compile_once(fresh_model(10), X)
    got1, want1, rep1 = compile_once(fresh_model(11), X)
    assert (rep0.frozen_cache, rep1.frozen_cache) == ("saved", "hit"), (rep0.notes, rep1.notes)
    assert rel_err(got0, want0) < 1e-5 and rel_err(got1, want1) < 1e-5
    assert rel_err(want0, want1) > 0.1


class SmallTensors(torch.nn.Module):
    """Tensors Inductor writes into the compiled code by value (a 0-d one, a 1-d one of 8 elements:
    a bias), beside one it reads (the weight)."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(8, 32, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(8, generator=g))
        self.scale = torch.nn.Parameter(torch.rand((), generator=g) + 0.5)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias) * self.scale


def test_small_tensors_written_into_the_code_are_the_new_models(tmp_path, monkeypatch):
    # Inductor inlines a 0-d tensor and a 1-d one of <= 8 elements into the compiled code by value;
    # the FX graph cache hashes those values, but a warm start loads its entry by the recorded key.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    runs = {}
    for tag, seed in [("a", 30), ("b", 31), ("a again", 30)]:
        got, want, rep = compile_once(SmallTensors(seed), X)
        runs[tag] = rep.frozen_cache
        assert rel_err(got, want) < 1e-6, (tag, rep.notes)
    # another model's values key an entry of their own; the same values hit
    assert runs == {"a": "saved", "b": "saved", "a again": "hit"}, runs
    entries = list((tmp_path / "inductor_fuse_frozen").rglob("*.pkl"))
    assert len(entries) == 2
    for path in entries:  # the entries record the values they hold in their code
        data = pickle.loads(path.read_bytes())
        shapes = sorted(tuple(v.shape) for _, v in data["inlined"].values())
        assert shapes == [(), (8,)], data["inlined"]
        # an entry whose values are not the model's (one reached past the key) is not used
        for _, value in data["inlined"].values():
            value.add_(1.0)
        path.write_bytes(pickle.dumps(data))
    for seed in (30, 31):
        got, want, rep = compile_once(SmallTensors(seed), X)
        assert rep.frozen_cache == "saved", rep.notes  # compiled cold, the entry written anew
        assert any("this model's differ" in n for n in rep.notes), rep.notes
        assert rel_err(got, want) < 1e-6


def test_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    with config.patch(frozen_cache=False):
        got, want, rep = compile_once(fresh_model(12), X)
    assert rep.frozen_cache == "" and any("frozen-graph cache off" in n for n in rep.notes), rep.notes
    assert rel_err(got, want) < 1e-5
    assert not (tmp_path / "inductor_fuse_frozen").exists()


def test_a_recipe_that_does_not_reproduce_its_constant_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(frozen_cache, "_same_values", lambda a, b: False)
    got, want, rep = compile_once(fresh_model(13), X)
    assert rep.frozen_cache == "", rep.notes
    assert any("did not reproduce" in n for n in rep.notes), rep.notes
    assert rel_err(got, want) < 1e-5
    got, want, rep = compile_once(fresh_model(14), X)  # nothing to hit: cold again
    assert rep.frozen_cache == "" and rel_err(got, want) < 1e-5


@pytest.mark.parametrize("damage", ["unreadable", "fx_graph_gone"])
def test_a_broken_entry_compiles_cold(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    compile_once(fresh_model(15), X)
    (entry,) = (tmp_path / "inductor_fuse_frozen").rglob("*.pkl")
    if damage == "unreadable":
        entry.write_bytes(b"not a pickle")
    else:
        data = pickle.loads(entry.read_bytes())
        data["fx_key"] = "f" + "0" * 51  # no such FX graph
        entry.write_bytes(pickle.dumps(data))
    got, want, rep = compile_once(fresh_model(16), X)
    assert rep.frozen_cache == "saved", rep.notes  # compiled cold, and the entry written anew
    assert rel_err(got, want) < 1e-5
    got, want, rep = compile_once(fresh_model(17), X)
    assert rep.frozen_cache == "hit" and rel_err(got, want) < 1e-5, rep.notes


def test_tied_weights_keep_their_aliasing(tmp_path, monkeypatch):
    # Two attributes on one storage (tied embedding and output) key apart from two separate tensors.
    class Tied(torch.nn.Module):
        def __init__(self, tie: bool):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 32)
            self.out = torch.nn.Linear(32, 50, bias=False)
            if tie:
                self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(self.emb(ids) * 2.0)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    for tie in (True, False, True):
        torch.manual_seed(int(tie))
        model = Tied(tie).eval()
        got, want, rep = compile_once(model, ids)
        assert rel_err(got, want) < 1e-5, (tie, rep.notes)


def test_symbolic_shapes_start_warm_at_every_length(tmp_path, monkeypatch):
    # dynamic=True: the entry is keyed by the traced sizes (symbols, not values), so a second model
    # starts warm, and its one graph serves every length (the FX graph cache's shape guards hold).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    keys = []
    monkeypatch.setattr(frozen_cache, "cache_key", lambda *a: keys.append(_real_cache_key(*a)) or keys[-1])

    class Dynamic(CacheProbe):
        def forward(self, x):
            return super().forward(x)

    states = []
    for seed in (18, 19):
        torch.manual_seed(seed)
        model = Dynamic(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden=48).eval()
        compiled = torch.compile(model, backend="inductor_fuse", dynamic=True)
        with torch.no_grad():
            for shape in ((2, 3, 32), (3, 5, 32), (2, 9, 32)):
                x = torch.randn(shape)
                assert rel_err(compiled(x), model(x)) < 1e-5
        states.append(inductor_fuse.last_report().frozen_cache)
    assert len(keys) == 2 and keys[0] == keys[1], keys  # one compile per model, one key
    assert states == ["saved", "hit"], states


def test_another_compile_under_the_fx_key_is_not_used(tmp_path, monkeypatch):
    # The FX graph cache keeps one compile of a graph per set of shape guards; the entry names its
    # own, and a warm start that gets another one compiles cold.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    compile_once(fresh_model(21), X)
    monkeypatch.setattr(frozen_cache, "_compiled_id", lambda compiled: ("Eq(s0, 3)", "another"))
    got, want, rep = compile_once(fresh_model(22), X)
    assert rep.frozen_cache == "saved" and any("another compile of this graph" in n for n in rep.notes), rep.notes
    assert rel_err(got, want) < 1e-5


def test_too_little_memory_for_the_cpu_constants_compiles_cold(tmp_path, monkeypatch):
    # The cold compile sized its CPU constants (dequant_cpu's budget) to the memory it had; a warm
    # start that would not fit now compiles cold, where the rules size them again.
    from inductor_fuse.patterns import dequant_cpu

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    compile_once(fresh_model(19), X)
    monkeypatch.setattr(dequant_cpu, "available_memory", lambda: 1024)
    got, want, rep = compile_once(fresh_model(20), X)
    assert rep.frozen_cache != "hit" and any("entry not used" in n for n in rep.notes), rep.notes
    assert rel_err(got, want) < 1e-5
