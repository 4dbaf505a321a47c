"""Small helpers the rule families share: frozen constants, fake values, module names."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes

def constant_of(node: Any) -> torch.Tensor | None:
    """The real tensor behind a frozen-constant ``get_attr`` node, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    gm = node.graph.owning_module
    value = getattr(gm, node.target, None)
    return value if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor) else None


def add_constant(graph: fx.Graph, tensor: torch.Tensor, prefix: str) -> fx.Node:
    """Register ``tensor`` as a frozen constant of the graph's module; return its get_attr node.

    The tensor is marked a frozen parameter, so Inductor's FX graph cache keys it by metadata
    and reads its value from this module on a cache hit (never a stale copy from the cache).
    """
    gm = graph.owning_module
    # Names are deterministic per graph: they are part of Inductor's cache key.
    i = 0
    while hasattr(gm, f"_inductor_fuse_{prefix}{i}"):
        i += 1
    name = f"_inductor_fuse_{prefix}{i}"
    tensor._is_frozen_param = True  # type: ignore[attr-defined]
    gm.register_buffer(name, tensor)
    first = next(iter(graph.nodes))
    with graph.inserting_before(first):
        node = graph.get_attr(name)
    fake_mode = _fake_mode(graph)
    if fake_mode is not None:
        node.meta["val"] = fake_mode.from_tensor(tensor, static_shapes=True)
    return node


def erase_if_unused(node: fx.Node) -> None:
    """Erase a dead node; for a dead constant, also drop the tensor from the module."""
    if node.users:
        return
    graph = node.graph
    if node.op == "get_attr":
        gm = graph.owning_module
        still_used = any(n.op == "get_attr" and n.target == node.target and n is not node for n in graph.nodes)
        graph.erase_node(node)
        if not still_used and hasattr(gm, node.target):
            delattr(gm, node.target)
    elif node.op == "call_function":
        graph.erase_node(node)


def set_fake_value(node: fx.Node) -> None:
    """Fill ``node.meta['val']`` by running the node's target on its inputs' fake values."""
    fake_mode = _fake_mode(node.graph)
    if fake_mode is None:
        return
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)


def _fake_mode(graph: fx.Graph):
    for n in graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, FakeTensor):
            return val.fake_mode
    return None


def real_tensors():
    """Context for computing real (not fake) tensors inside a compilation."""
    return _disable_current_modes()


def module_name(node: fx.Node) -> str:
    """Short name of the nn.Module a node came from, e.g. ``q_proj`` (``?`` if unknown)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]  # e.g. "L['self'].layers[0].attn.q_proj"
    tail = path.rsplit(".", 1)[-1]
    return tail.split("[")[0] or path
