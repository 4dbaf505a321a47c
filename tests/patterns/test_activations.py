"""graph_utils' activation recognizer, shared by `glu` (up from the product) and `conv1d` (down from
the convolution): what a pointwise chain computes, evaluated on a float64 probe, on graphs traced
with Inductor's decompositions (the spellings the rules meet)."""

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

from inductor_fuse.patterns.graph_utils import activation_after, activation_of, pointwise_chain

CASES = {  # y = x.abs() (pointwise itself: the walk stops at y) -> (activation, last op of the chain)
    "F.silu": (lambda y: F.silu(y), "silu"),
    "y * sigmoid(y)": (lambda y: torch.sigmoid(y) * y, "silu"),
    "y / (exp(-y) + 1)": (lambda y: y / (torch.exp(-y) + 1), "silu"),
    "float32 round trip": (lambda y: F.silu(y.float()).to(y.dtype), "silu"),
    "a reader after it": (lambda y: F.silu(y).float() * 2, "silu"),
    "gelu tanh": (lambda y: F.gelu(y, approximate="tanh"), "gelu_tanh"),
    "gelu erf": (lambda y: F.gelu(y), None),
    "another reader of y": (lambda y: F.silu(y) + y, None),
    "not an activation": (lambda y: y * 2, None),
    # equal to SiLU / GELU-tanh in [-8, 8] only: fused without their clamp before the probe reached 1e30
    "silu of a clamp": (lambda y: F.silu(y.clamp(-10, 10)), None),
    "a clamped silu": (lambda y: F.silu(y).clamp(max=20), "silu"),  # the clamp a reader after it
    "gelu tanh of a clamp": (lambda y: F.gelu(y.clamp(max=12), approximate="tanh"), None),
    "silu of hardtanh": (lambda y: F.silu(F.hardtanh(y, -9.5, 9.5)), None),
    "silu of a far clamp": (lambda y: F.silu(y.clamp(max=1e20)), None),
}


def _graph(body, dtype):
    gm = make_fx(lambda x: body(x.abs()), select_decomp_table(), tracing_mode="fake")(torch.randn(4, 6, dtype=dtype))
    y = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.abs.default)
    return gm, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_activation_after(case, dtype):
    body, expect = CASES[case]
    gm, y = _graph(body, dtype)
    found = activation_after(y)
    if expect is None:
        assert found is None
        return
    name, out, chain = found
    assert name == expect and out is chain[-1] and out.meta["val"].dtype == dtype
    assert set(y.users) <= set(chain)  # every reader of y is absorbed ...
    assert all(set(n.users) <= set(chain) for n in chain[:-1])  # ... and nothing else reads inside
    # the shortest chain: out's result is what the eager activation returns (not the * 2 after it)
    x = torch.randn(4, 6, dtype=dtype)
    env = {y: x.abs()}
    for n in chain:
        env[n] = n.target(*torch.fx.node.map_arg(n.args, env.__getitem__), **n.kwargs)
    ref = F.silu(x.abs().float()) if expect == "silu" else F.gelu(x.abs().float(), approximate="tanh")
    torch.testing.assert_close(env[out].float(), ref, rtol=1e-2, atol=1e-2)


def test_pointwise_chain_and_activation_of_from_the_output():
    gm, y = _graph(lambda y: torch.sigmoid(y) * y, torch.float32)
    out = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.mul.Tensor)
    root, chain = pointwise_chain(out, stop=y)
    assert root is y and chain[-1] is out and activation_of(root, chain, out) == "silu"
    root, chain = pointwise_chain(out)  # without stop: through abs, to the input
    assert root.op == "placeholder" and activation_of(root, chain, out) is None  # silu(|x|) is not silu(x)


@pytest.mark.parametrize(
    "act",
    [lambda g: F.silu(g.clamp(-10, 10)), lambda g: F.silu(g).clamp(max=20)],
    ids=["silu-of-clamp", "clamped-silu"],
)
def test_a_glu_whose_gate_is_clamped_stays_as_written(act):
    # end to end, as it was met: gate values past the clamp, compiled against eager (the product's
    # operand is the clamp in the second: activation_of's chain holds it)
    import inductor_fuse

    class ClampedGLU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.u = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)

        def forward(self, x):
            return act(self.g(x)) * self.u(x)

    torch.manual_seed(0)
    model, x = ClampedGLU().eval(), 20 * torch.randn(4, 64)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="inductor_fuse")(x)
    assert model.g(x).abs().max() > 25  # both clamps bite
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert inductor_fuse.last_report().counts["glu"] == 0
