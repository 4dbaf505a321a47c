"""The ``inductor_fuse`` torch.compile backend.

    torch.compile(model, backend="inductor_fuse")                     # registered by entry point (or,
                                                                      # not installed, at import)
    torch.compile(model, backend="inductor_fuse", mode="reduce-overhead")
    torch.compile(model, backend="inductor_fuse", options={"siblings": False})
    torch.compile(model, backend=inductor_fuse.make_backend(mode="reduce-overhead", siblings=True))

What it does, per Dynamo graph:
1. Inference graphs (no input needs a gradient) are compiled with Inductor's freezing on.
   Dynamo lifts parameters and buffers to graph inputs unless freezing was on while it traced,
   which a backend cannot arrange without touching the global config; so the backend turns
   them back into graph attributes first, as Dynamo does itself under freezing, and installs
   the guards Dynamo would have installed then: an ID_MATCH guard per lifted tensor. Another
   model of the same class, a tensor replaced by ``load_state_dict(..., assign=True)`` or a
   ``.to()`` that makes new tensors therefore recompiles instead of running with the first
   model's frozen weights. An identity guard is a pointer compare: Gemma-3-270M's 530 cost its
   decode step's guard check about 12 us on an H200 host, within the noise of decode tok/s.
   Freezing then makes the tensors the graph does not mutate constants. In-place edits of those
   tensors after compiling (``load_state_dict`` without ``assign``, ``p.copy_``, ``p += d``,
   ``.data``) are not seen by the compiled code, as with stock freezing (README: "Weights are
   frozen"). A guard on each tensor's version counter would catch all but ``.data``, but reading
   ``_version`` through the guard tree cost 0.75 us a tensor: Gemma-3-270M decode ran 16% slower
   (benchmarks/bench_guards.py, benchmarks/results/2026-12-01-guards-version-guards.json).
   The one in-place edit of ordinary use is seen: a ``torch.optim`` optimizer's step (a training
   loop that evaluates under ``no_grad`` between steps). A global post-step hook marks the
   parameters each step updated; a frozen graph called after a step looks for its own among them
   and, where one is, runs stock Inductor without freezing from then on (``_TrainedWeights``, a
   WARNING). Between steps a call costs one integer compare.
2. Our rule families (``patterns/``) run as ``joint_custom_post_pass``, just before freezing.
   They express weight concatenations as graph nodes; freezing folds them into constants once,
   before Inductor's FX-graph-cache key is taken. Folded constants are frozen parameters: the
   cache keys them by metadata and re-reads them from the live graph on a hit, so a warm cache
   never serves stale weights. ``RulePass.uuid()`` (a hash of every plugin file) is in the key.
3. Everything else is stock ``compile_fx``; options are scoped with ``config_patches``, never
   by assigning Inductor's global config.
4. A graph with float CPU tensors starts Inductor's C++ toolchain set-up on a thread
   (`_prepare_cpp_toolchain`): its check of the compiler's SIMD ISAs (a dry compile and load of a test
   program per ISA, ~5 s on a 2-core machine with a cold cache) and the precompiled header of its
   kernels' prefix (~6 s), both of which Inductor otherwise builds at its first C++ kernel, in the
   middle of codegen. Started before lowering, they run while the graph is lowered.
5. A graph compiled before (same code, shapes, configs, torch, GPU, plugin source), in this process
   or an earlier one, starts warm from the frozen-graph cache (``frozen_cache.py``): the frozen
   constants re-made from this model's own tensors by recipes the cold compile recorded and
   checked, the code from Inductor's FX graph cache; no AOT, rules or freezing.
Failures never fail the user's compile when stock Inductor can compile the graph: a rule that
raises is skipped for that graph (``patterns.RulePass``); any other error of a compile with our
rules makes the backend compile the graph again with stock Inductor (freezing, no rules). Both
are logged at WARNING and recorded in the report.
Graphs that need gradients go to stock Inductor untouched, with a WARNING (once).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import threading
import time
import unittest.mock
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo import guards as dynamo_guards
from torch._dynamo.exc import RestartAnalysis
from torch._dynamo.guards import GuardBuilder, install_guard
from torch._inductor import list_mode_options
from torch._inductor.codecache import CppPythonBindingsCodeCache
from torch._inductor.compile_fx import compile_fx, compile_fx_inner
from torch._inductor.cpu_vec_isa import valid_vec_isa_list
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from . import config, frozen_cache, report
from .freezing import incremental_freezing_props
from .options import FuseOptions, validate_mode
from .patterns import RulePass

log = logging.getLogger("inductor_fuse")


def _is_module_state(value: Any, source: Any) -> bool:
    """Parameters, and tensors Dynamo read from an nn.Module (buffers): what Dynamo itself
    turns into graph attributes under freezing. User-passed tensors stay graph inputs."""
    if isinstance(value, torch.nn.Parameter):
        return True
    if not isinstance(value, torch.Tensor) or getattr(value, "_dynamo_static_input_type", None) is None:
        return False
    guard_source = getattr(source, "guard_source", None)
    guard_source = guard_source() if callable(guard_source) else guard_source
    return guard_source is not None and (
        guard_source.is_unspecialized_nn_module() or guard_source.is_specialized_nn_module()
    )


def _short_repr(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{type(value).__name__}(shape={list(value.shape)}, dtype={value.dtype}, device={value.device})"
    return builtins.repr(value)


def _id_match(builder: GuardBuilder, guard: Any) -> None:
    """GuardBuilder.ID_MATCH, the tensor described by its shape in the guard's text. Torch 2.11
    writes repr(value) there, which for a tensor formats its values (and for a CUDA one copies them
    to the host): about 1 ms a tensor, the 1,063 tensors of a Llama-3-8B on every compile, warm
    cache or not. Torch 2.13 writes the type alone; there the patched name is not read."""
    with unittest.mock.patch.object(dynamo_guards, "repr", _short_repr, create=True):
        GuardBuilder.ID_MATCH(builder, guard)


_optimizer_steps = 0  # steps of torch.optim optimizers since the first frozen graph (_count_step)
_stepped_at = WeakIdKeyDictionary()  # parameter -> _optimizer_steps after the last step that updated it


def _count_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    """After each optimizer step: the parameters it updated (those with a gradient) are marked with
    the step's number. Marks, not version counters: a fused optimizer's step (``Adam(fused=True)``)
    leaves the counters as they were."""
    global _optimizer_steps
    _optimizer_steps += 1
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                _stepped_at[p] = _optimizer_steps


@functools.cache
def _count_optimizer_steps() -> None:
    """Count every torch.optim optimizer's steps from now on: one global post-step hook, registered
    with the first frozen graph (an import of the package leaves torch.optim alone)."""
    register_optimizer_step_post_hook(_count_step)


class _TrainedWeights:
    """The parameters a frozen graph baked in. `moved()` is asked on every call and looks at them
    only after an optimizer step. Weak references: the graph's record keeps no model alive."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        _count_optimizer_steps()
        self.steps = _optimizer_steps
        self.params = [weakref.ref(p) for p in params]

    def moved(self) -> int:
        """How many of the parameters an optimizer step updated since the compile (0 where no
        optimizer stepped since the last call)."""
        if self.steps == _optimizer_steps:
            return 0
        since, self.steps = self.steps, _optimizer_steps
        return sum((p := ref()) is not None and _stepped_at.get(p, 0) > since for ref in self.params)


TRAINED = (
    "an optimizer step changed {n} of the {total} parameter(s) this graph froze at compile time: "
    "compiled again by stock Inductor without freezing (weights read at every call, no rewrites, "
    "no CUDA graphs), used from this call on"
)


@torch._dynamo.disable  # called while a compiled frame runs: nothing in the compile is traced
def _compile_unfrozen(gm: fx.GraphModule, inputs: list[Any], patches: dict[str, Any]) -> Callable:
    """The graph by stock Inductor without freezing: the parameters stay graph attributes that
    each call reads (TRAINED). Where that compile fails, the graph itself, run eagerly."""
    try:
        with torch.no_grad():
            return compile_fx(gm, inputs, config_patches={**patches, "freezing": False, "triton.cudagraphs": False})
    except Exception as e:  # noqa: BLE001 -- the user's call must still get the trained weights' result
        failed = f"{type(e).__name__}: {e}"
        log.warning("inductor_fuse: compiling without freezing failed (%s); running the graph eagerly", failed)
        return gm


def _lift_parameters(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[int]:
    """Turn parameter/buffer placeholders into graph attributes (as Dynamo does under freezing).

    Freezing then makes the ones the graph does not mutate constants; mutated buffers (a KV
    cache) stay inputs, static ones, so CUDA graphs still capture the step.

    Returns the indices of the inputs that stay graph inputs.
    """
    placeholders = gm.graph.find_nodes(op="placeholder")
    if len(placeholders) != len(example_inputs) or not hasattr(gm, "_param_name_to_source"):
        return list(range(len(example_inputs)))
    keep = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        source = getattr(node, "_dynamo_source", None)
        if source is None or not _is_module_state(value, source):
            keep.append(i)
            continue
        name = f"_inductor_fuse_input{i}"
        if isinstance(value, torch.nn.Parameter):
            gm.register_parameter(name, value)
        else:
            gm.register_buffer(name, value)
        gm._param_name_to_source[name] = source
        # Dynamo traced this tensor as an input and guards only its metadata; from now on its
        # value is baked in, so guard its identity (what Dynamo does itself under freezing).
        install_guard(source.make_guard(_id_match))
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta.update(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.recompile()
    return keep


# The inductor_fuse ops that take a linear's weight (after the activation), by qualified name.
_LINEAR_OPS = frozenset(
    f"inductor_fuse::{name}"
    for name in (
        "qlinear",
        "glu_qlinear",
        "qlinear_q8",
        "glu_qlinear_q8",
        "glu_qlinear_q8_quantize_act",
        "glu_linear",
        "sliced_linear",
    )
)


def _linear_weight_bytes(gm: fx.GraphModule) -> int:
    """The bytes of the weights the graph's linears read, each tensor once: the weight and bias of
    every `linear` and every graph attribute an inductor_fuse linear op takes (`_LINEAR_OPS`: the
    quantized planes and biases of `qlinear`), where those are graph attributes (as
    `_lift_parameters` leaves module state); not a KV cache another op of ours reads. What a decode
    step reads besides its KV cache; sizes the early trigger (config.pdl_early_for)."""
    tensors: dict[int, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "_qualified_op_name", None) or getattr(node.target, "_name", None)
        if name not in _LINEAR_OPS and node.target not in (torch._C._nn.linear, torch.nn.functional.linear):
            continue
        found: list[fx.Node] = []
        fx.node.map_arg((node.args[1:], node.kwargs), found.append)  # the first argument is the activation
        for a in found:
            value = functools.reduce(getattr, a.target.split("."), gm) if a.op == "get_attr" else None
            if isinstance(value, torch.Tensor):
                tensors[id(value)] = value
    return sum(t.nbytes for t in tensors.values())


NEEDS_GRAD = (
    "graph needs gradients: compiled by stock Inductor, no rewrites "
    "(compile under torch.no_grad() or torch.inference_mode() for the rules)"
)
MIN_TORCH = (2, 11)
TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
OLD_TORCH = (
    f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}, the oldest this plugin "
    "supports: compiled by stock Inductor, no rewrites"
)
GROUPED_MM_CUDA = (
    "the graph calls grouped_mm on CUDA (transformers' default MoE experts path): with torch 2.11 on an "
    "H200, stock Inductor's compiled model of such graphs (tiny Mixtral) was measured wrong and "
    "nondeterministic (logits 0.04-0.18 rel. err. against eager) in 4 of 4 fresh processes, while "
    "experts_implementation='eager' was exact in 12 of 12 compiles; this plugin does not change that path. "
    "Build the model with experts_implementation='eager' (docs/robustness.md)"
)
_GROUPED_MM = {torch.ops.aten._grouped_mm, torch.ops.aten._grouped_mm.default} | {
    f for f in (getattr(torch, "_grouped_mm", None), getattr(torch.nn.functional, "grouped_mm", None)) if f is not None
}  # what a Dynamo graph calls grouped_mm through


def calls_grouped_mm(gm: fx.GraphModule) -> bool:
    """Whether the Dynamo graph calls grouped_mm (torch._grouped_mm, F.grouped_mm or the aten op)."""
    return any(n.op == "call_function" and n.target in _GROUPED_MM for n in gm.graph.nodes)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("inductor_fuse: %s", message)


# A kernel of the form Inductor's C++ kernels take: building it builds the precompiled header
# that every C++ kernel of the graph then includes.
_PREFIX_PROBE = """#include <torch/csrc/inductor/cpp_prefix.h>
extern "C" void kernel(float* in_out_ptr0)
{
    in_out_ptr0[0] = in_out_ptr0[0] + 1.0f;
}
"""


@functools.cache
def _prepare_cpp_toolchain() -> None:
    """Prepare Inductor's C++ toolchain on a daemon thread, once per process: its check of the SIMD
    ISAs the compiler builds (``valid_vec_isa_list``, cached for the process), then the
    precompiled header of its kernel prefix (``cpp_prefix.h``, cached on disk), built by compiling a
    one-line kernel through the code cache the graph's kernels go through, so with the same flags.
    Codegen asks for the same list and header later and finds them, or waits for the file lock of
    the one being built. An error here is left for codegen to meet and report."""

    def probe() -> None:
        try:
            valid_vec_isa_list()
            CppPythonBindingsCodeCache.load_pybinding(["float*"], _PREFIX_PROBE)
        except Exception:  # noqa: BLE001 -- codegen builds them again and raises there
            pass

    threading.Thread(target=probe, name="inductor_fuse-cpp-toolchain", daemon=True).start()


def inductor_fuse_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: dict[str, Any] | FuseOptions | None = None,
) -> Callable:
    """The Dynamo backend. ``mode`` as for stock Inductor; ``options``: rule family -> bool."""
    mode = validate_mode(mode)
    opts = FuseOptions.from_dict(options)
    patches: dict[str, Any] = dict(list_mode_options(mode))

    if any(isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == "cpu" for t in example_inputs):
        _prepare_cpp_toolchain()
    with report.collecting() as rep:
        if calls_grouped_mm(gm) and any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs):
            _warn_once(GROUPED_MM_CUDA)
            rep.notes.append(GROUPED_MM_CUDA)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs
        )
        if needs_grad:
            _warn_once(NEEDS_GRAD)
            rep.notes.append(NEEDS_GRAD)
            return compile_fx(gm, example_inputs, config_patches=patches)
        if TORCH_VERSION < MIN_TORCH:
            _warn_once(OLD_TORCH)
            rep.notes.append(OLD_TORCH)
            return compile_fx(gm, example_inputs, config_patches=patches)

        keep = _lift_parameters(gm, example_inputs)
        try:
            weight_bytes = _linear_weight_bytes(gm)
        except Exception as e:  # noqa: BLE001 -- a sizing error must not cost the compile
            weight_bytes = 0
            rep.notes.append(f"linear weights not sized ({type(e).__name__}: {e}): counted as 0")
        early = config.pdl_early_for(weight_bytes)
        rep.notes.append(
            f"{len(example_inputs) - len(keep)} parameter/buffer input(s) made graph state for freezing, each"
            " with an identity guard;"
            f" rule families {opts.enabled()};"
            f" linear weights {weight_bytes / 2**30:.2f} GiB: pdl_early auto {'on' if early else 'off'}"
            f" (on from {config.PDL_EARLY_MIN_WEIGHT_BYTES / 2**30:g} GiB)"
        )
        patches.update(
            {
                "freezing": True,
                # CPU: keep frozen linears as mm/addmm (mkldnn weight prepacking would hide them).
                "cpp.weight_prepack": False,
            }
        )
        inputs = [example_inputs[i] for i in keep]
        rules = RulePass(opts.enabled())
        key, compiled = _warm_start(gm, inputs, patches, rules, rep)
        recorder = frozen_cache.Recorder() if key is not None and compiled is None else None
        with torch.no_grad():
            try:
                if compiled is None:
                    with incremental_freezing_props(), recorder.recording() if recorder else contextlib.nullcontext():
                        compiled = compile_fx(
                            gm,
                            inputs,
                            inner_compile=recorder.inner_compile(compile_fx_inner) if recorder else compile_fx_inner,
                            config_patches={**patches, "joint_custom_post_pass": rules},
                        )
                    if recorder is not None:
                        _save_entry(key, recorder, gm, len(inputs), rep)
            except RestartAnalysis:
                raise  # Dynamo asks to trace again (e.g. a float input specialized): not a failure
            except Exception as e:  # noqa: BLE001 -- any failure of ours must leave the user a working compile
                failure = report.Failure.of("backend", e)
                rep.rewrites.clear()
                rep.skipped.clear()
                rep.failures.append(failure)
                log.warning(
                    "inductor_fuse: compiling with rules failed (%s, at %s); compiling this graph with "
                    "stock Inductor (freezing, no rules) instead",
                    failure.error,
                    failure.where,
                )
                compiled = compile_fx(gm, inputs, config_patches=patches)

    n_all, n_keep = len(example_inputs), len(keep)
    graph_pdl_early = config.graph_pdl_early
    kept = set(keep)
    params = [t for i, t in enumerate(example_inputs) if i not in kept and isinstance(t, torch.nn.Parameter)]
    trained = _TrainedWeights(params) if params else None

    def run(*args):
        nonlocal compiled, trained
        # Dynamo passes either every original input or, having seen the lifted placeholders
        # disappear from its graph, only the ones that are still inputs.
        if n_keep != n_all and len(args) == n_all:
            args = [args[i] for i in keep]
        if trained is not None and (n := trained.moved()):
            message = TRAINED.format(n=n, total=len(trained.params))
            log.warning("inductor_fuse: %s", message)
            rep.notes.append(message)
            trained = None
            compiled = _compile_unfrozen(gm, list(args), patches)
        # the kernels this graph launches (or a CUDA graph records) read it: config.pdl_early_wanted
        token = graph_pdl_early.set(early)
        try:
            return compiled(*args)
        finally:
            graph_pdl_early.reset(token)

    return run


def _warm_start(gm, inputs, patches, rules, rep) -> tuple[str | None, Callable | None]:
    """The frozen-graph cache's key for this graph (None where the cache is off or the graph is not
    cacheable) and, on a hit, the compiled graph made from it (frozen_cache.py)."""
    off = frozen_cache.enabled(patches)
    if off is not None:
        rep.notes.append(f"frozen-graph cache {off}")
        return None, None
    try:
        key = frozen_cache.cache_key(gm, inputs, patches, rules.uuid())
    except frozen_cache.NotCacheable as e:
        rep.notes.append(f"frozen-graph cache: not cacheable ({e})")
        return None, None
    except Exception as e:  # noqa: BLE001 -- the cache must never cost the compile
        rep.notes.append(f"frozen-graph cache: no key ({type(e).__name__}: {e})")
        return None, None
    t0 = time.perf_counter()
    try:
        entry = frozen_cache.read(key)
        if entry is None:
            return key, None
        with torch.no_grad():
            compiled = frozen_cache.compiled_from(entry, gm, inputs, patches)
        rep.add_seconds("frozen_cache/load", time.perf_counter() - t0)
    except frozen_cache.NotCacheable as e:
        rep.notes.append(f"frozen-graph cache: entry not used ({e}); compiled cold")
        return key, None
    except Exception as e:  # noqa: BLE001 -- a broken entry means a cold compile, never a failure
        log.warning(
            "inductor_fuse: frozen-graph cache entry %s unusable (%s: %s); compiling cold",
            key[:12],
            type(e).__name__,
            e,
        )
        rep.notes.append(f"frozen-graph cache: entry unusable ({type(e).__name__}: {e}); compiled cold")
        return key, None
    if compiled is None:
        rep.notes.append("frozen-graph cache: entry found, its FX graph was not; compiled cold")
        return key, None
    rep.rewrites.extend(entry["rewrites"])
    rep.skipped.extend(entry["skipped"])
    rep.notes.append(f"frozen-graph cache hit: {frozen_cache.describe(entry)}")
    rep.frozen_cache = "hit"
    return key, compiled


def _save_entry(key: str, recorder: frozen_cache.Recorder, gm: fx.GraphModule, n_inputs: int, rep) -> None:
    if rep.failures:  # a warm start would not repeat the warning: compile cold each time
        rep.notes.append("frozen-graph cache: not saved (a rule failed)")
        return
    t0 = time.perf_counter()
    try:
        entry = recorder.entry(gm, n_inputs)
        entry["rewrites"], entry["skipped"] = list(rep.rewrites), list(rep.skipped)
        frozen_cache.save(key, entry)
    except frozen_cache.NotCacheable as e:
        rep.notes.append(f"frozen-graph cache: not saved ({e})")
        return
    except Exception as e:  # noqa: BLE001 -- the cache must never cost the compile
        log.info("inductor_fuse: frozen-graph cache entry not saved (%s: %s)", type(e).__name__, e)
        rep.notes.append(f"frozen-graph cache: not saved ({type(e).__name__}: {e})")
        return
    rep.add_seconds("frozen_cache/save", time.perf_counter() - t0)  # the recipes' check included
    rep.notes.append(f"frozen-graph cache: saved, {frozen_cache.describe(entry)}")
    rep.frozen_cache = "saved"


def make_backend(mode: str | None = None, **options: bool) -> Callable:
    """A backend callable with ``mode`` and rule-family options bound (both at once)."""
    validate_mode(mode)
    FuseOptions.from_dict(options)  # fail early on unknown keys
    return functools.partial(inductor_fuse_backend, mode=mode, options=options)


def entry_point_installed() -> bool:
    """Whether the package's ``torch_dynamo_backends`` entry point is installed (pip-installed, not a
    source tree on PYTHONPATH)."""
    from importlib import metadata

    return any(ep.name == "inductor_fuse" for ep in metadata.entry_points(group="torch_dynamo_backends"))


def register_without_entry_point() -> bool:
    """Give Dynamo the name "inductor_fuse" where the package runs without its entry point (a source
    tree on PYTHONPATH, not pip-installed), so that `import inductor_fuse` makes
    torch.compile(backend="inductor_fuse") work either way. Installed, the entry point names it and
    this registers nothing: registering the name as well would trip Dynamo's duplicate-name
    assertion at the entry point's first lookup. True when it registered the name."""
    if entry_point_installed():
        return False
    try:
        torch._dynamo.register_backend(inductor_fuse_backend, name="inductor_fuse")
    except AssertionError:  # registered already (the package imported again)
        return False
    log.info("inductor_fuse: no entry point (the package is not installed): backend name registered on import")
    return True
