"""A cache above AOTAutograd for the graphs the backend compiles with freezing.

Torch's AOTAutogradCache refuses every graph compiled with ``freezing`` (its constants are not
inputs, so a cached entry would not know them), so a warm start of ours re-ran Dynamo's graph
through AOT tracing, the joint-graph passes, our rules, freezing and the FX-graph-cache key before
the FX graph cache hit: 23 s against stock's 8.6 on a Llama-3-8B (docs/design.md, "Facts"). This
cache skips all of that on a warm start and keeps the "never another model's weights" promise.

What a cold compile records (``Recorder``, inside the compile, nothing changed in it):

- how each frozen constant the compiled code reads was made from the Dynamo graph's tensors. A
  constant is either one of those tensors or a view of one (freezing's parameters), or a constant
  fold: the subgraph of ops constant folding evaluated, copied out of the graph with its leaves as
  inputs (the concatenation of q|k|v planes, a dequantized CPU weight). Recorded where torch
  replaces a node by a constant (``replace_node_with_constant``), the one place freezing makes one;
- which arguments the compiled graph takes: the tensors freezing kept as inputs (a KV cache the
  graph writes) and the user's inputs;
- the FX graph cache key of the compiled graph.

The entry is written only when every constant has a recipe and each recipe, re-run on the same
tensors, reproduces its constant exactly (values, sizes, strides, dtype, device), and only when
AOT's runtime wrapper has nothing to do beyond calling the graph without grad (no input mutated
outside the graph, no output aliasing an input, no effect tokens, subclasses or RNG state, no
duplicated or aliased inputs folded away). Otherwise the reason is reported and the next start
compiles cold, as before.

A warm start (same Dynamo graph, same metadata of every tensor and input, same torch, triton,
GPU, configs, rule options and plugin source) re-runs the recipes on the new model's own tensors,
loads the compiled graph from Inductor's FX graph cache by its key with those constants, and calls
it as AOT's wrapper would. A second model of the same class with other weights thus gets its own
weights, and a miss anywhere (an evicted FX entry, an unreadable file) compiles cold.

One kind of constant is not read by the compiled code but written into it: Inductor inlines a 0-d
tensor and a 1-d one of at most 8 elements (a small bias, a scale) by value. The key therefore holds
the values of every such tensor of the Dynamo graph (a model with other values gets an entry of its
own), and the entry holds the values of each one its code inlined; a warm start whose recipes give
other values (a small fold of large tensors) compiles cold.

A graph with symbolic shapes (``dynamic=True``: a compiled prefill) is keyed by its traced sizes,
not by a call's: one entry serves every length. The FX graph cache's shape guards decide whether its
compiled code holds for the call's sizes, as on a stock AOT-cache hit; since it may keep several
compiles of one graph (one per set of guards), the entry names its own and another compiles cold.

The entries live under Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``), in
``inductor_fuse_frozen/``; ``INDUCTOR_FUSE_FROZEN_CACHE=0`` (``config.settings.frozen_cache``)
turns the cache off, as do Inductor's ``force_disable_caches`` and a disabled FX graph cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import torch
import torch.fx as fx

from . import config
from .freezing import tensor_meta

FORMAT = 3  # bump when an entry's layout changes
# Part of every key. The test suite sets it to the run's and each test's id, so that no test meets
# an entry another test or an earlier run wrote (tests that spy on the compile would see a warm
# start instead).
KEY_SALT = ""


class NotCacheable(Exception):
    """Why a graph gets no entry (reported; the graph compiles as usual)."""


# --- recipes --------------------------------------------------------------------------------


@dataclasses.dataclass
class Alias:
    """A tensor of the Dynamo graph (``attr``), or a view of its storage when ``view`` is set:
    (size, stride, storage offset)."""

    attr: str
    view: tuple[tuple[int, ...], tuple[int, ...], int] | None = None


@dataclasses.dataclass
class Fold:
    """The ops constant folding evaluated: ``graph`` (a pickled GraphModule) run on the recipes
    ``leaves``, by index."""

    graph: bytes
    leaves: list[int]


class _Source:
    """A tensor a fold read that is not a recorded constant: resolved to an ``Alias`` at save."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _attr(module: torch.nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _graph_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors the Dynamo graph holds: what AOT lifts (parameters and buffers) and what its
    ``get_attr`` nodes read."""
    out = dict(gm.named_parameters(remove_duplicate=False))
    out.update(gm.named_buffers(remove_duplicate=False))
    for node in gm.graph.find_nodes(op="get_attr"):
        value = _attr(gm, node.target)
        if isinstance(value, torch.Tensor):
            out.setdefault(node.target, value)
        elif not isinstance(value, torch.nn.Module):  # a subgraph is keyed by its code
            raise NotCacheable(f"the graph reads a {type(value).__name__} attribute ({node.target})")
    return out


def _storage(t: torch.Tensor) -> tuple[Any, int]:
    return (t.device, t.untyped_storage().data_ptr())


class Recorder:
    """Records, during one cold compile, what a warm start needs (see the module docstring)."""

    def __init__(self) -> None:
        self.recipes: list[Alias | Fold | _Source] = []
        self._by_tensor: dict[int, int] = {}
        self._alive: list[torch.Tensor] = []  # keeps the ids of _by_tensor unique
        self.freeze: tuple[list[int], list[Any], Any, int] | None = None
        self.inner: tuple[fx.GraphModule, Any, dict[str, Any]] | None = None
        self.problem: str | None = None

    # the three hooks ---------------------------------------------------------------------------

    def _recipe_of(self, tensor: torch.Tensor) -> int:
        idx = self._by_tensor.get(id(tensor))
        if idx is None:
            idx = self._add(tensor, _Source(tensor))
        return idx

    def _add(self, tensor: torch.Tensor, recipe: Alias | Fold | _Source) -> int:
        self.recipes.append(recipe)
        self._by_tensor[id(tensor)] = len(self.recipes) - 1
        self._alive.append(tensor)
        return len(self.recipes) - 1

    def _fold(self, gm: fx.GraphModule, node: fx.Node) -> Fold:
        order: list[fx.Node] = []
        seen: set[fx.Node] = set()
        stack: list[tuple[fx.Node, bool]] = [(node, False)]
        while stack:  # post-order: every node after its inputs
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen:
                continue
            seen.add(n)
            if n.op not in ("get_attr", "call_function"):
                raise NotCacheable(f"a constant fold reads a {n.op} node ({n.name})")
            stack.append((n, True))
            stack.extend((a, False) for a in reversed(n.all_input_nodes))
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        leaves: list[int] = []
        for n in order:
            if n.op == "get_attr":
                value = _attr(gm, n.target)
                if not isinstance(value, torch.Tensor):
                    raise NotCacheable(f"a constant fold reads a non-tensor attribute {n.target}")
                env[n] = graph.placeholder(f"leaf{len(leaves)}")
                leaves.append(self._recipe_of(value))
            else:
                env[n] = graph.node_copy(n, lambda a: env[a])
        graph.output(env[node])
        return Fold(pickle.dumps(fx.GraphModule(torch.nn.Module(), graph)), leaves)

    def replace_node_with_constant(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def hook(gm, node, constant=None, name=None, *args, **kwargs):
            if constant is not None and self.problem is None:
                try:
                    if node.op == "placeholder":  # a parameter freezing makes a constant
                        self._add(constant, _Source(constant))
                    else:
                        self._add(constant, self._fold(gm, node))
                except NotCacheable as e:
                    self.problem = str(e)
                except Exception as e:  # noqa: BLE001 -- recording must never fail the compile
                    self.problem = f"recording a constant failed: {type(e).__name__}: {e}"
            return original(gm, node, constant, name, *args, **kwargs)

        return hook

    def freeze_hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def hook(dynamo_gm, aot_gm, example_inputs, *args, **kwargs):
            opt_model, preserved = original(dynamo_gm, aot_gm, example_inputs, *args, **kwargs)
            ctx = torch._guards.TracingContext.try_get()
            params = list(ctx.params_flat) if ctx is not None and ctx.params_flat is not None else None
            unwrapped = getattr(ctx, "params_flat_unwrap_subclasses", None) if ctx is not None else None
            meta = ctx.fw_metadata if ctx is not None else None
            if params is None or meta is None or unwrapped is None or len(unwrapped) != len(params):
                self.problem = self.problem or "no AOT tracing context (or tensor subclasses) at freezing"
            else:
                # the parameter list is read now: fw_compiler_freezing drops the frozen ones from it later
                self.freeze = (list(preserved), params, meta, len(example_inputs))
            return opt_model, preserved

        return hook

    def inner_compile(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def hook(gm, example_inputs, **kwargs):
            initial = {
                "cudagraphs": bool(kwargs.get("cudagraphs")),
                "static_input_idxs": kwargs.get("static_input_idxs"),
            }
            compiled = original(gm, example_inputs, **kwargs)
            if self.inner is not None:
                self.problem = self.problem or "more than one graph compiled"
            self.inner = (gm, compiled, initial)
            return compiled

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        from torch._inductor import constant_folding, freezing

        with (
            mock.patch.object(
                constant_folding,
                "replace_node_with_constant",
                self.replace_node_with_constant(constant_folding.replace_node_with_constant),
            ),
            mock.patch.object(
                freezing,
                "replace_node_with_constant",
                self.replace_node_with_constant(freezing.replace_node_with_constant),
            ),
            mock.patch.object(freezing, "freeze", self.freeze_hook(freezing.freeze)),
        ):
            yield

    # the entry ---------------------------------------------------------------------------------

    def entry(self, gm: fx.GraphModule, n_inputs: int) -> dict[str, Any]:
        """The entry for the compile just recorded, checked; raises NotCacheable."""
        if self.problem:
            raise NotCacheable(self.problem)
        if self.freeze is None or self.inner is None:
            raise NotCacheable("the graph was not compiled through freezing")
        preserved, params, meta, n_aot = self.freeze
        frozen_gm, compiled, initial = self.inner
        fx_key = getattr(compiled, "_fx_graph_cache_key", None)
        if not fx_key:
            raise NotCacheable("the FX graph cache did not keep the compiled graph")
        if n_aot != len(params) + n_inputs:
            raise NotCacheable("AOT merged or added inputs (duplicated or aliased inputs, RNG state)")
        _check_runtime_meta(meta)

        tensors = _graph_tensors(gm)
        by_id = {id(t): name for name, t in tensors.items()}
        by_storage: dict[tuple[Any, int], list[str]] = {}
        for name, t in tensors.items():
            by_storage.setdefault(_storage(t), []).append(name)

        def alias(t: torch.Tensor) -> Alias:
            if id(t) in by_id:
                return Alias(by_id[id(t)])
            for name in by_storage.get(_storage(t), ()):
                if tensors[name].dtype == t.dtype:
                    return Alias(name, (tuple(t.shape), tuple(t.stride()), t.storage_offset()))
            raise NotCacheable(f"a constant ({list(t.shape)} {t.dtype}) is not one of the model's tensors")

        args: list[tuple[str, Any]] = []
        for i in preserved:
            if i < len(params):
                if params[i] is None or id(params[i]) not in by_id:
                    raise NotCacheable("an input freezing kept is not one of the model's tensors")
                args.append(("attr", by_id[id(params[i])]))
            else:
                args.append(("input", i - len(params)))

        recipes: list[Alias | Fold] = [alias(r.tensor) if isinstance(r, _Source) else r for r in self.recipes]

        def recipe_of(value: torch.Tensor) -> int:
            """The recipe index of a constant of the frozen graph: recorded, else one of the model's tensors."""
            idx = self._by_tensor.get(id(value))
            if idx is None:
                recipes.append(alias(value))
                idx = len(recipes) - 1
            return idx

        constants = {
            name: recipe_of(_attr(frozen_gm, name))
            for name in dict.fromkeys(getattr(compiled, "frozen_param_names", {}).values())
        }
        # the small constants Inductor wrote into the compiled code by value (not read as frozen
        # parameters, so not in `constants`): a warm start must find the same values
        inlined: dict[str, tuple[int, torch.Tensor]] = {}
        for node in frozen_gm.graph.find_nodes(op="get_attr"):
            value = _attr(frozen_gm, node.target)
            if node.target in constants or not isinstance(value, torch.Tensor) or not _inlinable(value):
                continue
            inlined[node.target] = (recipe_of(value), value.detach().to("cpu", copy=True))

        # every recipe the entry uses, re-run now, must give its constant back
        build = _Builder(recipes, tensors, keep=False)
        fold_bytes = 0  # what a warm start allocates on the host
        for name, idx in [*constants.items(), *((n, i) for n, (i, _) in inlined.items())]:
            want, got = _attr(frozen_gm, name), build(idx)
            if tensor_meta(want) != tensor_meta(got) or not _same_values(want, got):
                raise NotCacheable(f"re-running the recipe of {name} did not reproduce it")
            if isinstance(recipes[idx], Fold) and want.device.type == "cpu":
                fold_bytes += want.nbytes
        in_graph = set(getattr(meta, "mutated_graph_handled_indices_seen_by_autograd", ()) or ())
        mutated = [k for k, i in enumerate(preserved) if i in in_graph]
        return {
            "format": FORMAT,
            "fx_key": fx_key,
            "recipes": recipes,
            "constants": constants,
            "inlined": inlined,
            "args": args,
            "bump_versions": mutated,
            "cudagraphs": initial["cudagraphs"],
            "static_input_idxs": list(initial["static_input_idxs"] or ()),
            "num_outputs": meta.num_outputs,
            # outputs with symbolic sizes, marked for the next graph as AOT's wrapper does
            "dynamic_dims": [(i, sorted(o.dynamic_dims)) for i, o in enumerate(meta.output_info) if o.dynamic_dims],
            # which compile of the graph this is: the FX graph cache may hold several under its key,
            # one per set of shape guards (a graph with symbolic shapes)
            "fx_compiled": _compiled_id(compiled),
            "cpu_fold_bytes": fold_bytes,
        }


def _compiled_id(compiled: Any) -> tuple[str | None, str]:
    """The shape guards an FX graph cache entry was saved with, and a hash of its code."""
    code = getattr(compiled, "source_code", None) or ""
    return (getattr(compiled, "guards_expr", None), hashlib.sha256(code.encode()).hexdigest())


def _inlinable(t: torch.Tensor) -> bool:
    """Whether Inductor may write t into the compiled code by value instead of reading it: a 0-d
    tensor, or a 1-d one of at most 8 elements (``GraphLowering.get_attr``). Its FX graph cache
    hashes such a constant's values, so an entry loaded by its key carries another model's values."""
    return t.dim() == 0 or (t.dim() == 1 and t.shape[0] <= 8)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's bytes, flat, on the CPU (uint8)."""
    flat = t.detach().to("cpu").reshape(-1).contiguous()
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, sizes and bits (a NaN equals itself, -0.0 is not 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(_bits(a), _bits(b)))


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.storage_offset() == b.storage_offset():
        return True
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    return bool(torch.equal(a, b))


def _check_runtime_meta(meta: Any) -> None:
    """AOT's runtime wrapper must have nothing to do but call the graph without grad."""
    from torch._functorch._aot_autograd.schemas import MutationType, OutputType

    problems = {
        "an input mutated outside the graph": any(
            i.mutation_type == MutationType.MUTATED_OUT_GRAPH for i in meta.input_info
        ),
        "an output aliasing an input or another output": any(
            o.output_type != OutputType.non_alias for o in meta.output_info
        ),
        "intermediate bases": meta.num_intermediate_bases != 0,
        "effect tokens": len(getattr(meta, "tokens", ()) or ()) != 0,
        "RNG state": bool(getattr(meta, "is_rng_op_functionalized", False)),
        "a grad-mode change": getattr(meta, "grad_enabled_mutation", None) is not None,
        "tensor subclasses": any(
            type(x).__name__ == "SubclassCreationMeta"
            for x in (
                *(getattr(meta, "subclass_inp_meta", None) or ()),
                *(getattr(meta, "subclass_fw_graph_out_meta", None) or ()),
            )
        ),
    }
    found = [k for k, v in problems.items() if v]
    if found:
        raise NotCacheable("AOT's runtime wrapper has work to do: " + ", ".join(found))


@functools.lru_cache(maxsize=256)
def _fold_module(graph: bytes) -> fx.GraphModule:
    """A fold's graph, unpickled once: a model's layers repeat the same few folds (the same
    concatenation of planes, the same dequantization)."""
    return pickle.loads(graph)


class _Builder:
    """Makes constants from the model's ``tensors`` by their recipes. Folds read by other folds are
    kept; with ``keep`` False, a constant asked for is not (the check at save builds one at a time)."""

    def __init__(self, recipes: Sequence[Alias | Fold], tensors: dict[str, torch.Tensor], keep: bool = True) -> None:
        self.recipes, self.tensors, self.keep = recipes, tensors, keep
        self.memo: dict[int, torch.Tensor] = {}

    def __call__(self, idx: int, top: bool = True) -> torch.Tensor:
        if idx in self.memo:
            return self.memo[idx]
        r = self.recipes[idx]
        if isinstance(r, Alias):
            base = self.tensors[r.attr]
            if r.view is None:
                out = base
            else:
                size, stride, offset = r.view
                out = torch.empty(0, dtype=base.dtype, device=base.device)
                out.set_(base.untyped_storage(), offset, size, stride)
        else:
            with torch.no_grad(), torch.utils._python_dispatch._disable_current_modes():
                out = _fold_module(r.graph)(*(self(i, top=False) for i in r.leaves))
        if self.keep or not top:
            self.memo[idx] = out
        return out


# --- the key --------------------------------------------------------------------------------


def _tensor_key(t: Any, layout: tuple | None = None) -> Any:
    """A tensor or plain value as the key sees it; ``layout`` (sizes, strides, storage offset) given
    where they are symbolic (``_input_key``), else the tensor's own, which must be concrete."""
    if isinstance(t, torch.Tensor):
        if layout is None:
            meta = tensor_meta(t)
            if meta is None:
                raise NotCacheable("a tensor of the graph with symbolic sizes")
            layout = meta[:3]
        return (
            type(t).__name__,
            *layout,
            str(t.dtype),
            str(t.device),
            t.requires_grad,
            getattr(t, "_dynamo_static_input_type", None),
        )
    if isinstance(t, (int, float, bool, str, type(None))):
        return (type(t).__name__, t)
    raise NotCacheable(f"an input of type {type(t).__name__}")


def _symbolic(value: Any) -> Any:
    """A SymInt, or a size, stride or offset of a tensor traced with symbolic shapes, as the key
    sees it: its expression and the range each of its symbols may take (Dynamo's, a user's
    ``mark_dynamic`` bounds). Not its value: that is the next call's, and the FX graph cache's guards
    (kept with the compiled graph) say whether the compiled code holds for it."""
    if not isinstance(value, torch.SymInt):
        return value
    expr = value.node.expr
    ranges = value.node.shape_env.var_to_range
    return (str(expr), sorted((str(s), str(ranges.get(s))) for s in expr.free_symbols))


def _input_key(x: Any, placeholder: fx.Node) -> Any:
    """An input of the graph: as ``_tensor_key`` has it, except where Dynamo traced it with symbolic
    shapes (``dynamic=True``, ``mark_dynamic``, automatic dynamic): then by its placeholder's traced
    sizes and strides, so that every length a dynamic graph takes hits the same entry."""
    traced = placeholder.meta.get("example_value")
    if isinstance(x, torch.SymInt) or isinstance(traced, torch.SymInt):
        return ("SymInt", _symbolic(traced if isinstance(traced, torch.SymInt) else x))
    if isinstance(x, torch.Tensor) and isinstance(traced, torch.Tensor) and tensor_meta(traced) is None:
        sizes, strides = (tuple(_symbolic(d) for d in dims) for dims in (traced.shape, traced.stride()))
        return _tensor_key(x, (sizes, strides, _symbolic(traced.storage_offset())))
    return _tensor_key(x)


def _device_names(tensors: Sequence[torch.Tensor]) -> list[str]:
    names = set()
    for t in tensors:
        if t.is_cuda:
            p = torch.cuda.get_device_properties(t.device)
            names.add(f"{p.name} sm{p.major}{p.minor}")
    return sorted(names)


def cache_key(
    gm: fx.GraphModule,
    inputs: Sequence[Any],
    patches: dict[str, Any],
    rule_uuid: Any,
) -> str:
    """A key of everything the compiled graph depends on; raises NotCacheable."""
    from torch._inductor.codecache import torch_key

    if torch._C._is_any_autocast_enabled():
        raise NotCacheable("autocast")
    h = hashlib.sha256()

    def add(*parts: Any) -> None:
        h.update(repr(parts).encode())
        h.update(b"\0")

    add(FORMAT, KEY_SALT, sys.version, torch.__version__, torch_key())
    try:
        import triton

        add("triton", triton.__version__)
    except ImportError:
        add("triton", None)
    for name, module in gm.named_modules():
        if isinstance(module, fx.GraphModule):
            add(name, module.code)
    tensors = _graph_tensors(gm)
    first_of: dict[tuple[Any, int], str] = {}
    for name, t in tensors.items():
        add(name, isinstance(t, torch.nn.Parameter), _tensor_key(t), first_of.setdefault(_storage(t), name))
        if _inlinable(t):  # its values may be in the compiled code: a model with others gets its own entry
            add(_bits(t).tolist())
    placeholders = gm.graph.find_nodes(op="placeholder")
    if len(placeholders) != len(inputs):
        raise NotCacheable("the graph's placeholders are not its inputs")
    add("inputs", [_input_key(x, p) for x, p in zip(inputs, placeholders)])
    # which inputs share a storage with a tensor of the graph or with each other
    add(
        "aliasing",
        [
            first_of.setdefault(_storage(x), f"input{i}") if isinstance(x, torch.Tensor) else None
            for i, x in enumerate(inputs)
        ],
    )
    add("devices", _device_names([*tensors.values(), *(x for x in inputs if isinstance(x, torch.Tensor))]))
    add("patches", sorted((k, repr(v)) for k, v in patches.items()), rule_uuid)
    add("settings", repr(dataclasses.replace(config.settings, on_matvec_launch=None)))
    add(
        "configs",
        torch._inductor.config.get_hash(),
        torch._functorch.config.get_hash(),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.are_deterministic_algorithms_enabled(),
    )
    return h.hexdigest()


# --- the store ------------------------------------------------------------------------------


def enabled(patches: dict[str, Any]) -> str | None:
    """None when the cache may be used, else why not."""
    inductor = torch._inductor.config
    if not config.settings.frozen_cache:
        return "off (INDUCTOR_FUSE_FROZEN_CACHE=0)"
    if patches.get("force_disable_caches", inductor.force_disable_caches):
        return "off (Inductor's force_disable_caches)"
    if not patches.get("fx_graph_cache", inductor.fx_graph_cache):
        return "off (Inductor's FX graph cache is off)"
    if getattr(torch._functorch.config, "bundled_autograd_cache", False):
        return "off (bundled_autograd_cache)"
    return None


def _path(key: str) -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return os.path.join(cache_dir(), "inductor_fuse_frozen", key[:2], key + ".pkl")


def save(key: str, entry: dict[str, Any]) -> None:
    from torch._inductor.codecache import write_atomic

    write_atomic(_path(key), pickle.dumps(entry), make_dirs=True)  # Inductor's own: a temp file, then a rename


def read(key: str) -> dict[str, Any] | None:
    try:
        with open(_path(key), "rb") as f:
            entry = pickle.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    return entry


# --- the warm start -------------------------------------------------------------------------


def compiled_from(entry: dict[str, Any], gm: fx.GraphModule, inputs: Sequence[Any], patches: dict[str, Any]):
    """The warm start: a callable taking the graph's inputs, or None on an FX graph cache miss."""
    from torch._inductor.codecache import FxGraphCache
    from torch._inductor.output_code import CompiledFxGraphConstantsWithGm
    from torch._inductor.utils import BoxedBool

    from .patterns.dequant_cpu import MEMORY_FRACTION, available_memory

    if entry["cpu_fold_bytes"] > available_memory() * MEMORY_FRACTION:
        # the cold compile sized its CPU dequantization to the memory it had: size it again now
        raise NotCacheable(
            f"its CPU constants ({entry['cpu_fold_bytes'] / 2**30:.1f} GiB) need more memory than is available now"
        )
    tensors = _graph_tensors(gm)
    build = _Builder(entry["recipes"], tensors)  # the model's constants, by the entry's recipes (folds once)
    for name, (idx, value) in entry["inlined"].items():
        if not _same_bits(build(idx), value):
            raise NotCacheable(
                f"its compiled code holds the values of {name} {list(value.shape)}, and this model's differ"
            )
    holder = torch.nn.Module()  # what CompiledFxGraphConstantsWithGm reads the frozen constants from
    for name, idx in entry["constants"].items():
        setattr(holder, name, build(idx))
    arg_map = entry["args"]
    fixed = {k: tensors[x] for k, (kind, x) in enumerate(arg_map) if kind == "attr"}
    bump, n_out, dynamic_dims = entry["bump_versions"], entry["num_outputs"], entry["dynamic_dims"]

    def flat_args(args: Sequence[Any]) -> list[Any]:
        return [fixed[k] if kind == "attr" else args[x] for k, (kind, x) in enumerate(arg_map)]

    constants = CompiledFxGraphConstantsWithGm(holder)
    example = flat_args(inputs)
    with torch._inductor.config.patch(patches):
        torch._inductor.async_compile.CompiledTritonKernels.cache_clear()
        compiled, _ = FxGraphCache.load_with_key(
            entry["fx_key"], [], example, local=True, remote_cache=None, is_backward=False, constants=constants
        )
        if compiled is None:
            return None
        if _compiled_id(compiled) != entry["fx_compiled"]:
            # the sizes of this call pass the guards of another compile of the graph, whose
            # constants may differ from the ones recorded here
            raise NotCacheable("the FX graph cache gave another compile of this graph (other shape guards)")
        graph_kwargs = {
            "cudagraphs": BoxedBool(entry["cudagraphs"]),
            "is_backward": False,
            "is_inference": True,
            "boxed_forward_device_index": None,
            "static_input_idxs": entry["static_input_idxs"],
        }
        compiled.post_compile(example, constants, graph_kwargs)

    def call(*args: Any) -> list[Any]:
        flat = flat_args(args)
        if bump:
            torch.autograd.graph.increment_version([flat[k] for k in bump])
        grad = torch.is_grad_enabled()
        if grad:
            torch._C._set_grad_enabled(False)
        try:
            outs = compiled(flat)
        finally:
            if grad:
                torch._C._set_grad_enabled(True)
        if len(outs) != n_out:
            raise AssertionError(f"inductor_fuse frozen cache: expected {n_out} outputs, got {len(outs)}")
        for i, dims in dynamic_dims:
            _mark_dynamic(outs[i], set(dims))
        return outs

    return call


def _mark_dynamic(t: torch.Tensor, dims: set[int]) -> None:
    """What AOT's runtime wrapper does to an output with symbolic sizes (named by torch's version)."""
    from torch._functorch._aot_autograd import runtime_wrappers as rw

    mark = getattr(rw, "mark_dynamo_propagated_dynamic_indices", None) or rw.maybe_mark_dynamic_helper
    mark(t, dims)


def describe(entry: dict[str, Any]) -> str:
    folds = sum(isinstance(entry["recipes"][i], Fold) for i in set(entry["constants"].values()))
    return f"{len(entry['constants'])} constants ({folds} re-folded), {len(entry['args'])} graph arguments"
