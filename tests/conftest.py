import os
import sys

# Triton kernels run on the CPU under the interpreter unless INDUCTOR_FUSE_GPU_TESTS=1 asks for
# the real GPU kernels. Set here, before anything imports a kernel module: `triton.jit` reads the
# variable when it decorates, so a kernel imported earlier would not be interpreted.
if os.environ.get("INDUCTOR_FUSE_GPU_TESTS", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
