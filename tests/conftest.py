import os
import sys
import uuid

# Triton kernels run on the CPU under the interpreter unless INDUCTOR_FUSE_GPU_TESTS=1 asks for
# the real GPU kernels. Set here, before anything imports a kernel module: `triton.jit` reads the
# variable when it decorates, so a kernel imported earlier would not be interpreted.
if os.environ.get("INDUCTOR_FUSE_GPU_TESTS", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

# pytest-xdist runs one worker per core (pyproject.toml's addopts), and each worker's torch would
# start one OpenMP thread per core too: N workers, N x N threads on N cores, whose spinning threads
# wait on one another in every parallel region (eager ops and Inductor's C++ kernels alike). Each
# worker takes its share of the cores instead, unless OMP_NUM_THREADS says otherwise. Set before
# torch is imported (OpenMP reads it once), so that Inductor's compile workers inherit it too.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS))

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

# Tests compile the way users do: many models in one process, no torch._dynamo.reset() between
# them. Each model instance compiles its own code (the backend guards frozen weights by
# identity), so one forward() is compiled far more often than Dynamo's default limit of 8 per
# function, past which Dynamo runs further instances eagerly (correct, but nothing to test).
# tests/test_backend.py::test_past_the_recompile_limit checks what users get at the default.
torch._dynamo.config.recompile_limit = 256
torch._dynamo.config.accumulated_recompile_limit = 4096


_RUN = uuid.uuid4().hex  # this run's (each xdist worker draws its own: a test runs in one worker)


@pytest.fixture(autouse=True)
def _frozen_cache_per_test(request, monkeypatch):
    """The frozen-graph cache (inductor_fuse/frozen_cache.py) works within a test as for a user (a
    second model instance starts warm from the first one's entry), but no test meets an entry that
    another test wrote: a test that spies on the compile must see it run, whatever ran before it,
    in this run or in an earlier run on the same machine (Inductor's cache directory outlives it)."""
    from inductor_fuse import frozen_cache

    monkeypatch.setattr(frozen_cache, "KEY_SALT", f"{_RUN} {request.node.nodeid}")


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from the same torch RNG state, whatever ran before it in its process:
    pytest-xdist deals the tests to its workers in an order that changes from run to run, and a
    test that draws unseeded tensors must not see different values each time."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def act_quant_calls(monkeypatch):
    """Every launch of the act_quant kernel (its input's shape), from the ops' CUDA bodies and from
    kernels/dispatch.py, which both call it through their module attribute."""
    from inductor_fuse.kernels import _common, dispatch, ops

    calls = []

    def spy(x, interleave=False):
        calls.append(tuple(x.shape))
        return _common.act_quant(x, interleave=interleave)

    monkeypatch.setattr(ops, "act_quant", spy)
    monkeypatch.setattr(dispatch, "act_quant", spy)
    return calls
