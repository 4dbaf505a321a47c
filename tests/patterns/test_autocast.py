"""The rules under ``torch.autocast``: autocast casts every float32 weight (and bias) to its dtype
in front of the matmul or convolution, so the weights the rules see are casts of frozen constants.
Freezing folds those casts, so the rules fuse as they do without autocast. Compiled the way users
compile (no Dynamo reset); each test compares against the same model run eagerly under the same
autocast, and against stock Inductor."""

import sys
from pathlib import Path

import pytest
import torch
from numerics import rel_err
from torch._inductor.utils import run_and_get_code
from toy_models import TinyLlama

import inductor_fuse

sys.path.insert(0, str(Path(__file__).parent))
from test_conv1d_rule import MambaStyle  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_llama_block_under_autocast_fuses_and_matches_eager(dtype):
    torch.manual_seed(11)
    model = TinyLlama(n_layers=2).eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        ref = model(x)
        stock = torch.compile(model, backend="inductor")(x)
        got, (code,) = run_and_get_code(torch.compile(model, backend="inductor_fuse"), x)
    assert got.dtype == ref.dtype
    assert rel_err(got, ref) < 1e-2 and rel_err(stock, ref) < 1e-2
    counts = inductor_fuse.last_report().counts
    assert counts["siblings"] == 2 and counts["glu"] == 2, str(inductor_fuse.last_report())
    call = code[code.index("def call(") :]
    # the casts were folded with the concatenations: one fused weight constant per group, no cast of it per call
    assert call.count("extern_kernels.addmm(") == 2, call  # q|k|v per layer, over a [64, 64+32+32] constant
    assert "rand_strided((64, 128), (1, 64)" in code


def test_mamba_block_under_autocast_fuses_its_conv():
    torch.manual_seed(12)
    model = MambaStyle().eval()
    h = torch.randn(2, 7, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(h)
        got = torch.compile(model, backend="inductor_fuse")(h)
    assert rel_err(got, ref) < 1e-2
    assert inductor_fuse.last_report().counts["conv1d"] == 1, str(inductor_fuse.last_report())
