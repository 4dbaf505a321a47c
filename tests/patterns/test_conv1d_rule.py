"""Rule family `conv1d`: a depthwise causal conv1d (and the SiLU after it) becomes
torch.ops.inductor_fuse.depthwise_conv1d -- in a Mamba-style block, a GatedDeltaNet-style block
(4-way input projection), the decode form over a conv state, and every spelling of the causal
padding and of SiLU; left alone (with its reason) for dilation, stride, groups != channels,
non-causal padding. Compiled the way users compile (no Dynamo reset); each test compares against
the same module run eagerly."""

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import rel_err

import inductor_fuse
from inductor_fuse.quant import QuantConfig, quantize_

FAMILY = "conv1d"
OP = torch.ops.inductor_fuse.depthwise_conv1d


def _silu(y, spelling):
    if spelling == "module":
        return nn.SiLU()(y)
    if spelling == "sigmoid":
        return y * torch.sigmoid(y)
    if spelling == "none":
        return y
    return F.silu(y)


class MambaStyle(nn.Module):
    """in_proj -> x, gate; x (as [B, C, T]) through a causal depthwise conv + SiLU; * silu(gate);
    out_proj. The conv's padding spelled as nn.Conv1d(padding=K - 1)[..., :T] or as F.pad."""

    def __init__(self, dim=32, channels=48, k=4, spelling="F.silu", pad="conv", bias=True):
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * channels, bias=False)
        self.conv = nn.Conv1d(channels, channels, k, groups=channels, padding=k - 1 if pad == "conv" else 0, bias=bias)
        self.out_proj = nn.Linear(channels, dim, bias=False)
        self.spelling, self.pad, self.k = spelling, pad, k

    def forward(self, h):  # h [B, T, dim]
        x, gate = self.in_proj(h).chunk(2, dim=-1)
        T = x.shape[1]
        x = x.transpose(1, 2)  # [B, C, T]: channel stride 1
        if self.pad == "conv":
            y = self.conv(x)[..., :T]
        else:
            y = self.conv(F.pad(x, (self.k - 1, 0)))
        y = _silu(y, self.spelling).transpose(1, 2)
        return self.out_proj(y * F.silu(gate))


class GatedDeltaNetStyle(nn.Module):
    """A 4-way input projection (q, k, v, and a gate, as Qwen3.5's GatedDeltaNet layers); q, k, v
    concatenated through one causal depthwise conv + SiLU (transformers' spelling: conv then
    [:, :, :T], SiLU module); a stand-in for the delta rule (q * k * v); gated output."""

    def __init__(self, dim=32, head=16, k=4):
        super().__init__()
        self.q, self.k, self.v, self.g = (nn.Linear(dim, head, bias=False) for _ in range(4))
        self.conv1d = nn.Conv1d(3 * head, 3 * head, k, groups=3 * head, padding=k - 1, bias=False)
        self.act = nn.SiLU()
        self.o = nn.Linear(head, dim, bias=False)

    def forward(self, h):
        T = h.shape[1]
        qkv = torch.cat([self.q(h), self.k(h), self.v(h)], -1).transpose(1, 2)
        qkv = self.act(self.conv1d(qkv)[:, :, :T]).transpose(1, 2)
        q, k, v = qkv.chunk(3, -1)
        return self.o(q * k * v * torch.sigmoid(self.g(h)))


class ConvState(nn.Module):
    """The decode form: the conv state (the last K - 1 inputs) concatenated with the new tokens, a
    convolution without padding, the last T outputs kept, the state updated in place."""

    def __init__(self, channels=24, k=4):
        super().__init__()
        self.w = nn.Parameter(torch.randn(channels, 1, k, generator=torch.Generator().manual_seed(1)) / k)
        self.register_buffer("state", torch.randn(1, channels, k - 1, generator=torch.Generator().manual_seed(2)))
        self.k = k

    def forward(self, x):  # [1, C, T]
        xs = torch.cat([self.state, x], -1)
        self.state.copy_(xs[:, :, -(self.k - 1) :])
        return F.silu(F.conv1d(xs, self.w, None, groups=x.shape[1])[..., -x.shape[-1] :])


def _check(model, inputs, n_rewrites, tol=1e-4, silu=True):
    with torch.no_grad():
        ref = model(*inputs)
        got = torch.compile(model, backend="inductor_fuse")(*inputs)
    assert rel_err(got, ref) < tol
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == n_rewrites, str(rep)
    if n_rewrites:
        assert all(("SiLU" in r.detail) == silu for r in rep.rewrites if r.family == FAMILY), str(rep)
    return rep


@pytest.mark.parametrize("spelling", ["F.silu", "module", "sigmoid"])
@pytest.mark.parametrize("pad", ["conv", "F.pad"])
@pytest.mark.parametrize("T", [1, 7])
def test_mamba_style_block(spelling, pad, T):
    torch.manual_seed(0)
    model = MambaStyle(spelling=spelling, pad=pad).eval()
    _check(model, (torch.randn(2, T, 32),), 1)


def test_without_silu_and_bias():
    torch.manual_seed(0)
    _check(MambaStyle(spelling="none", bias=False).eval(), (torch.randn(1, 5, 32),), 1, silu=False)


def test_gated_delta_net_style_block():
    torch.manual_seed(0)
    _check(GatedDeltaNetStyle().eval(), (torch.randn(1, 9, 32),), 1)


def test_quantized_projections():
    """The projections int4-quantized: the conv (float) still fuses; compared with eager on the same
    quantized weights."""
    torch.manual_seed(0)
    model = GatedDeltaNetStyle(dim=64, head=64).eval()
    quantize_(model, QuantConfig(fmt="int4_g32"))
    _check(model, (torch.randn(1, 6, 64),), 1)


@pytest.mark.parametrize("T", [1, 3])
def test_decode_form_over_a_conv_state(T):
    eager, model = ConvState().eval(), ConvState().eval()
    x = torch.randn(1, 24, T)
    with torch.no_grad():
        ref = [eager(x), eager(x)]  # twice: the second call reads the state the first wrote
        compiled = torch.compile(model, backend="inductor_fuse")
        got = [compiled(x), compiled(x)]
    assert max(rel_err(g, r) for g, r in zip(got, ref)) < 1e-4
    assert rel_err(model.state, eager.state) < 1e-6
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == 1, str(rep)
    # the K - 1 + T inputs give T outputs, all kept (T symbolic once Dynamo has seen two lengths)
    assert re.search(
        rf"x\[1, 24, ({3 + T}|s\d+ \+ 3)\] float32, 4 taps, left pad 0, outputs 0..({T}|s\d+), SiLU, "
        "state updated in place",
        str(rep),
    )


class ConvStateReadTwice(ConvState):
    """The decode form, and the old state read once more after the update is written: the update
    cannot move into the kernel (it would change what that read sees); the convolution still fuses."""

    def forward(self, x):
        old = self.state * 1.0
        return super().forward(x) + old[..., -1:].sum()


def test_decode_form_keeps_an_update_that_is_read_elsewhere():
    eager, model = ConvStateReadTwice().eval(), ConvStateReadTwice().eval()
    x = torch.randn(1, 24, 1)
    with torch.no_grad():
        ref = [eager(x), eager(x)]
        compiled = torch.compile(model, backend="inductor_fuse")
        got = [compiled(x), compiled(x)]
    assert max(rel_err(g, r) for g, r in zip(got, ref)) < 1e-4
    assert rel_err(model.state, eager.state) < 1e-6
    rep = inductor_fuse.last_report()
    assert rep.counts[FAMILY] == 1 and "state updated in place" not in str(rep), str(rep)


class Conv(nn.Module):
    def __init__(self, conv, slice_to=None):
        super().__init__()
        self.conv, self.slice_to = conv, slice_to

    def forward(self, x):
        y = self.conv(x)
        return F.silu(y[..., : self.slice_to] if self.slice_to else y)


@pytest.mark.parametrize(
    "conv, slice_to, reason",
    [
        (nn.Conv1d(8, 8, 4, groups=8, padding=3, dilation=2), 10, "dilation [2]"),
        (nn.Conv1d(8, 8, 4, groups=8, padding=3, stride=2), 5, "stride [2]"),
        (nn.Conv1d(8, 8, 4, groups=2, padding=3), 10, "not depthwise"),
        (nn.Conv1d(8, 8, 4, groups=1, padding=3), 10, "not depthwise"),
        (nn.Conv1d(8, 16, 4, groups=8, padding=3), 10, "channel multiplier"),
        (nn.Conv1d(8, 8, 3, groups=8, padding=1), None, "not causal"),  # "same" padding
        (nn.Conv1d(8, 8, 4, groups=8, padding=3), None, "not causal"),  # no slice: reads the right pad
        (nn.Conv1d(8, 8, 4, groups=8, padding=3), 11, "not causal"),  # one output too many
        (nn.Conv1d(8, 8, 20, groups=8, padding=19), 10, "taps"),
    ],
    ids=["dilation", "stride", "groups", "dense", "multiplier", "same", "no-slice", "slice-too-long", "long"],
)
def test_left_alone_with_a_reason(conv, slice_to, reason):
    torch.manual_seed(0)
    model = Conv(conv, slice_to).eval()
    rep = _check(model, (torch.randn(1, 8, 10),), 0)
    assert any(s.family == FAMILY and reason in s.reason for s in rep.skipped), str(rep)


def test_silu_not_fused_when_the_conv_output_has_another_reader():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(8, 8, 4, groups=8, padding=3)

        def forward(self, x):
            y = self.conv(x)[..., : x.shape[-1]]
            return F.silu(y) + y

    torch.manual_seed(0)
    _check(TwoReaders().eval(), (torch.randn(1, 8, 6),), 1, silu=False)


def test_bfloat16():
    torch.manual_seed(0)
    model = MambaStyle().eval().to(torch.bfloat16)
    _check(model, (torch.randn(1, 5, 32, dtype=torch.bfloat16),), 1, tol=2e-2)


def test_option_turns_it_off():
    torch.manual_seed(0)
    model = MambaStyle().eval()
    x = torch.randn(1, 4, 32)
    with torch.no_grad():
        ref = model(x)
        got = torch.compile(model, backend="inductor_fuse", options={FAMILY: False})(x)
    assert rel_err(got, ref) < 1e-5
    assert inductor_fuse.last_report().counts[FAMILY] == 0


def test_op_matches_a_float64_convolution():
    """The op's reference (the CPU body) against F.conv1d in float64, odd shapes, every argument."""
    g = torch.Generator().manual_seed(5)
    for B, C, L, K, pad, start, length, silu in [(2, 5, 7, 4, 3, 0, 7, True), (1, 3, 9, 2, 0, 2, 6, False)]:
        x, w, b = torch.randn(B, C, L, generator=g), torch.randn(C, K, generator=g), torch.randn(C, generator=g)
        y = F.conv1d(F.pad(x.double(), (pad, 0)), w.double()[:, None], b.double(), groups=C)[
            ..., start : start + length
        ]
        y = F.silu(y) if silu else y
        assert rel_err(OP(x, w, b, pad, start, length, silu), y) < 1e-6


def test_op_refuses_bad_arguments():
    x, w = torch.randn(1, 4, 6), torch.randn(4, 3)
    with pytest.raises(ValueError, match="start <= start \\+ length"):
        OP(x, w, None, 2, 0, 10, False)
    with pytest.raises(ValueError, match="w must be"):
        OP(x, torch.randn(5, 3), None, 2, 0, 6, False)
    with pytest.raises(ValueError, match="dtype"):
        OP(x, w.double(), None, 2, 0, 6, False)


def test_unbatched_input():
    """F.conv1d on a [C, L] input (it unsqueezes to [1, C, L] and squeezes the result)."""

    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 1, 3, generator=torch.Generator().manual_seed(0)))

        def forward(self, v):  # v [T, C]
            v = v.transpose(-1, -2)
            return F.silu(F.conv1d(v, self.w, None, groups=8, padding=2)[..., : v.shape[-1]]).transpose(-1, -2)

    _check(Unbatched().eval(), (torch.randn(5, 8),), 1)
