"""A cheaper fake-tensor propagation for Inductor's freezing passes, used inside our compiles.

Inductor's `freezing_passes` (torch/_inductor/fx_passes/freezing_patterns.py, 2.11 and 2.13) runs
`fake_tensor_prop` over the whole graph three times: before its binary-folding loop, after each
constant fold inside it, and after the last fold. Each run executes every node of the graph again
under fake tensors; on a 32-layer decode step that is about 1 ms a node on a 2-core CPU, three
times over, on every compile, warm or cold (docs/design.md, "Facts").

Almost every node already has a correct ``meta["val"]`` then: AOT tracing set them, our rules set
them on the nodes they create, and constant folding copies the old node's ``meta`` onto the
``get_attr`` that replaces it. `incremental_fake_tensor_prop` therefore runs a node under fake tensors
only where its value can have changed:

- every ``get_attr`` whose value does not describe its constant (shape, strides, storage offset,
  dtype, device) any more;
- every node without a value, or whose value is not a fake tensor of the graph's fake mode;
- every node one of whose inputs got a value that differs from its old one (shape, strides, storage
  offset, dtype, device), transitively.

Every other node keeps its value, which the full propagation would have recomputed to the same
metadata. A value with symbolic sizes is never compared (comparing could add guards): its users
are recomputed. If anything fails, the full propagation runs instead. `INDUCTOR_FUSE_FULL_FAKE_PROP=1`
(`config.settings.full_fake_prop`) always runs the full one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from . import config

log = logging.getLogger("inductor_fuse")

try:  # torch's own module and function, patched for the duration of our compiles only
    from torch._inductor.fx_passes import freezing_patterns as _freezing_patterns

    _full_fake_tensor_prop = _freezing_patterns.fake_tensor_prop
except (ImportError, AttributeError):  # pragma: no cover -- a torch without them: nothing to patch
    _freezing_patterns = None
    _full_fake_tensor_prop = None


def tensor_meta(t: torch.Tensor) -> tuple[Any, ...] | None:
    """What a value's users depend on: (shape, strides, storage offset, dtype, device); None when any
    part is symbolic (not compared: no guards). Also the frozen-graph cache's layout of a tensor."""
    parts = (*t.shape, *t.stride(), t.storage_offset())
    if not all(type(p) is int for p in parts):
        return None
    return (tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype, t.device)


def _same(old: Any, new: Any) -> bool:
    old_leaves, old_spec = pytree.tree_flatten(old)
    new_leaves, new_spec = pytree.tree_flatten(new)
    if old_spec != new_spec:
        return False
    for a, b in zip(old_leaves, new_leaves, strict=True):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return False
            meta = tensor_meta(a)
            if meta is None or meta != tensor_meta(b):
                return False
        elif type(a) is not type(b) or not isinstance(a, (int, float, bool, type(None))) or a != b:
            return False
    return True


def _usable(val: Any, mode: Any) -> bool:
    """A value that can stand for the node: fake tensors of `mode`, plain numbers, None."""
    for leaf in pytree.tree_leaves(val):
        if isinstance(leaf, torch.Tensor):
            if not (isinstance(leaf, FakeTensor) and leaf.fake_mode is mode):
                return False
        elif not isinstance(leaf, (int, float, bool, type(None))):  # a SymInt too: recomputed
            return False
    return True


class _IncrementalProp(FakeTensorProp):
    def __init__(self, module: fx.GraphModule, mode: Any) -> None:
        super().__init__(module, mode=mode)
        self.changed: set[fx.Node] = set()
        self.ran = 0

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output"):
            return super().run_node(n)
        had = "val" in n.meta
        old = n.meta.get("val")
        if n.op == "get_attr" and had and _usable(old, self._mode):
            # a constant whose value already describes it (constant folding copies the folded node's
            # meta): no fake conversion needed
            real = self.fetch_attr(n.target)
            if isinstance(real, torch.Tensor) and isinstance(old, torch.Tensor):
                meta = tensor_meta(real)
                if meta is not None and meta == tensor_meta(old):
                    return old
        stale = (
            n.op == "get_attr"
            or not had
            or old is None
            or not _usable(old, self._mode)
            or any(a in self.changed for a in n.all_input_nodes)
        )
        if not stale:
            return old
        self.ran += 1
        result = super().run_node(n)
        if not (had and old is not None and _same(old, n.meta.get("val"))):
            self.changed.add(n)
        return result


def incremental_fake_tensor_prop(
    gm: fx.GraphModule, example_inputs: Sequence[Any], force_allow_non_fake_inputs: bool = False
) -> Any:
    """`torch._inductor.compile_fx.fake_tensor_prop`'s contract, running only the nodes whose value can
    have changed (module docstring); the full propagation when there is no fake mode to reuse or
    anything goes wrong."""
    mode = detect_fake_mode(example_inputs)
    if mode is None or config.settings.full_fake_prop:
        return _full_fake_tensor_prop(gm, example_inputs, force_allow_non_fake_inputs)
    try:
        # as torch's fake_tensor_prop does: real constants are converted where they are read
        allowing = (
            mock.patch.object(mode, "allow_non_fake_inputs", True)
            if force_allow_non_fake_inputs
            else contextlib.nullcontext()
        )
        with torch._dispatch.python.enable_python_dispatcher(), allowing:
            prop = _IncrementalProp(gm, mode)
            prop.propagate_dont_convert_inputs(*example_inputs)
    except Exception as e:  # noqa: BLE001 -- the full propagation is always there to fall back on
        log.debug("inductor_fuse: incremental fake-tensor propagation failed (%r); running the full one", e)
        return _full_fake_tensor_prop(gm, example_inputs, force_allow_non_fake_inputs)
    log.debug("inductor_fuse: fake-tensor propagation ran %d of %d nodes", prop.ran, len(gm.graph.nodes))
    return mode


@contextlib.contextmanager
def incremental_freezing_props() -> Iterator[None]:
    """Inductor's freezing passes use `incremental_fake_tensor_prop` inside this block (our compiles)."""
    if _freezing_patterns is None or _full_fake_tensor_prop is None:
        yield
        return
    saved = _freezing_patterns.fake_tensor_prop
    _freezing_patterns.fake_tensor_prop = incremental_fake_tensor_prop
    try:
        yield
    finally:
        _freezing_patterns.fake_tensor_prop = saved
