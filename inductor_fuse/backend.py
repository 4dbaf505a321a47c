"""The ``inductor_fuse`` torch.compile backend.

    torch.compile(model, backend="inductor_fuse")                     # registered by entry point
    torch.compile(model, backend="inductor_fuse", mode="reduce-overhead")
    torch.compile(model, backend="inductor_fuse", options={"siblings": False})
    torch.compile(model, backend=inductor_fuse.make_backend(mode="reduce-overhead", siblings=True))

What it does, per Dynamo graph:
1. Inference graphs (no input needs a gradient) are compiled with Inductor's freezing on:
   nn.Parameters become constants of the graph. Dynamo lifts parameters to graph inputs unless
   freezing was on while it traced, which a backend cannot arrange without touching the global
   config; so the backend turns parameter inputs back into graph attributes first, as Dynamo
   does itself under freezing. Weights are then fixed at compile time (stock freezing has the
   same contract): after changing weights, compile again (``torch._dynamo.reset()``).
2. Right after freezing, before Inductor computes its FX-graph-cache key, our rule families run
   on the frozen graph (``patterns/``). A weight concatenation happens there, once, and the
   result is a frozen constant: the cache keys it by metadata and re-reads it from the live
   graph on a hit, so a warm cache never serves stale weights.
3. Everything else is stock ``compile_fx``; options are scoped with ``config_patches``; the
   plugin's source hash is part of the cache key (``PluginVersion.uuid``).
Graphs that need gradients go to stock Inductor untouched, with a log line.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from . import report
from .options import FuseOptions, validate_mode

log = logging.getLogger("inductor_fuse")

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def plugin_hash() -> str:
    """SHA-256 over every source file of the package: changes to any rule or kernel change it."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class PluginVersion(CustomGraphPass):
    """Carries the plugin hash into Inductor's FX graph cache key.

    Our rewrites happen before the cache key is computed, so the key already sees the rewritten
    graph; but the graph only names ``torch.ops.inductor_fuse.*`` ops, whose kernels live in this
    package. Installed as ``post_grad_custom_post_pass`` so that ``uuid()`` enters the key; it
    changes nothing in the graph.
    """

    def __call__(self, graph: fx.Graph) -> None:
        return None

    def uuid(self) -> str:
        return plugin_hash()


def rule_passes(options: FuseOptions) -> list[CustomGraphPass]:
    """The enabled rule families' passes, in the order they must run."""
    from .patterns.siblings import SiblingLinearPass

    passes: list[CustomGraphPass] = []
    if options.siblings:
        passes.append(SiblingLinearPass())
    return passes


def _is_weight(value: Any) -> bool:
    return isinstance(value, torch.nn.Parameter)


def _lift_parameters(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[int]:
    """Turn parameter placeholders into graph attributes (what Dynamo does under freezing).

    Returns the indices of the inputs that stay graph inputs.
    """
    placeholders = gm.graph.find_nodes(op="placeholder")
    if len(placeholders) != len(example_inputs) or not hasattr(gm, "_param_name_to_source"):
        return list(range(len(example_inputs)))
    keep = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        source = getattr(node, "_dynamo_source", None)
        if not _is_weight(value) or source is None:
            keep.append(i)
            continue
        name = f"_inductor_fuse_param{i}"
        gm.register_parameter(name, value)
        gm._param_name_to_source[name] = source
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta.update(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.recompile()
    return keep


def _inner_compile(gm: fx.GraphModule, example_inputs, *, passes: Sequence[CustomGraphPass], **kwargs):
    """Run the rule families on the frozen graph, then Inductor's own inner compile (and cache)."""
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.freezing_utils import has_frozen_params

    if passes and has_frozen_params(gm):
        for rule in passes:
            rule(gm.graph)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return compile_fx_inner(gm, example_inputs, **kwargs)


def inductor_fuse_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: dict[str, Any] | FuseOptions | None = None,
) -> Callable:
    """The Dynamo backend. ``mode`` as for stock Inductor; ``options``: rule family -> bool."""
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    mode = validate_mode(mode)
    opts = FuseOptions.from_dict(options)
    patches: dict[str, Any] = dict(list_mode_options(mode))

    with report.collecting() as rep:
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs
        )
        if needs_grad:
            msg = "graph needs gradients: compiled by stock Inductor, no rewrites"
            log.info("inductor_fuse: %s", msg)
            rep.notes.append(msg)
            return compile_fx(gm, example_inputs, config_patches=patches)

        keep = _lift_parameters(gm, example_inputs)
        rep.notes.append(f"froze {len(example_inputs) - len(keep)} parameter(s); rule families {opts.enabled()}")
        patches.update(
            {
                "freezing": True,
                # CPU: keep frozen linears as mm/addmm (mkldnn prepacking would hide them).
                "cpp.weight_prepack": False,
                "post_grad_custom_post_pass": PluginVersion(),
            }
        )
        passes = rule_passes(opts)
        with torch.no_grad():
            compiled = compile_fx(
                gm,
                [example_inputs[i] for i in keep],
                inner_compile=functools.partial(_inner_compile, passes=passes),
                config_patches=patches,
            )

    n_all, n_keep = len(example_inputs), len(keep)
    if n_keep == n_all:
        return compiled

    def run(*args):
        # Dynamo passes either every original input or, having seen the lifted placeholders
        # disappear from its graph, only the ones that are still inputs.
        if len(args) == n_all:
            args = [args[i] for i in keep]
        return compiled(*args)

    return run


def make_backend(mode: str | None = None, **options: bool) -> Callable:
    """A backend callable with ``mode`` and rule-family options bound (both at once)."""
    validate_mode(mode)
    FuseOptions.from_dict(options)  # fail early on unknown keys
    return functools.partial(inductor_fuse_backend, mode=mode, options=options)
