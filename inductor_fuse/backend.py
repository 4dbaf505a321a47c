"""The ``inductor_fuse`` torch.compile backend.

    torch.compile(model, backend="inductor_fuse")                     # registered by entry point
    torch.compile(model, backend="inductor_fuse", mode="reduce-overhead")
    torch.compile(model, backend="inductor_fuse", options={"siblings": False})
    torch.compile(model, backend=inductor_fuse.make_backend(mode="reduce-overhead", siblings=True))

What it does, per Dynamo graph:
1. Inference graphs (no input needs a gradient) are compiled with Inductor's freezing on.
   Dynamo lifts parameters and buffers to graph inputs unless freezing was on while it traced,
   which a backend cannot arrange without touching the global config; so the backend turns
   them back into graph attributes first, as Dynamo does itself under freezing. Freezing then
   makes the ones the graph does not mutate constants. Weights are fixed at compile time (the
   contract of stock freezing): after changing weights, compile again (``torch._dynamo.reset()``).
2. Our rule families (``patterns/``) run as ``joint_custom_post_pass``, just before freezing.
   They express weight concatenations as graph nodes; freezing folds them into constants once,
   before Inductor's FX-graph-cache key is taken. Folded constants are frozen parameters: the
   cache keys them by metadata and re-reads them from the live graph on a hit, so a warm cache
   never serves stale weights. ``RulePass.uuid()`` (a hash of every plugin file) is in the key.
3. Everything else is stock ``compile_fx``; options are scoped with ``config_patches``, never
   by assigning Inductor's global config.
Graphs that need gradients go to stock Inductor untouched, with a log line.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from . import report
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
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta.update(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.recompile()
    return keep


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
        rep.notes.append(
            f"{len(example_inputs) - len(keep)} parameter/buffer input(s) made graph state for freezing;"
            f" rule families {opts.enabled()}"
        )
        patches.update(
            {
                "freezing": True,
                # CPU: keep frozen linears as mm/addmm (mkldnn weight prepacking would hide them).
                "cpp.weight_prepack": False,
                "joint_custom_post_pass": RulePass(opts),
            }
        )
        with torch.no_grad():
            compiled = compile_fx(gm, [example_inputs[i] for i in keep], config_patches=patches)

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
