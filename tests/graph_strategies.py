"""Random model graphs for property tests: a description, the module it builds, what should fuse.

A `GraphSpec` is a straight-line program over values v0..vn; v0 is the input x [..., width0],
every other value is produced by one step and has the feature dim last:

    v3 = linear[q4_k](v1, 32, bias)      # nn.Linear / QuantizedLinear, in the model dtype
    v4 = linear[bfloat16](v0, 16)        # a float linear of the other dtype: cast in, cast out
    v5 = silu(v3)                        # silu | gelu_tanh | relu
    v6 = mul(v5, v2)                     # elementwise product of two values of one width
    v7 = conv1d(v6, k=3)                 # depthwise causal conv over the token dim

Every value is used: the outputs are every value nothing reads, plus some intermediates that
are also read (returned *and* consumed). `graph_specs()` draws them; `build_model(spec, seed)`
makes a fresh nn.Module; `expected_glu_pairs(spec)` and `expected_sibling_groups(spec)` say, from
the description alone, which products the `glu` family and which linears the `siblings` family
must fuse (every conv1d step is a causal depthwise one: the `conv1d` family fuses each), and
`expected_act_quant_groups(spec)` which quantized linears the `act_quant` family makes share one
quantized activation.
"""

from __future__ import annotations

import collections
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

import inductor_fuse
from inductor_fuse.kernels.registry import KERNELS
from inductor_fuse.quant import FORMATS

ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    "relu": F.relu,
}
FLOAT_KINDS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INPUT_WIDTHS = (32, 64, 256)  # K: 256 admits every format (k-quants), 32 / 64 the 32-blocks
OUT_WIDTHS = (8, 16, 24, 32, 40, 64, 96, 256)  # 32 / 64 / 256 let a quantized linear read the result


# -- the description ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Linear:
    src: int
    out: int
    bias: bool
    kind: str  # a key of FLOAT_KINDS or of quant.FORMATS


@dataclasses.dataclass(frozen=True)
class Act:
    src: int
    fn: str  # a key of ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class Mul:
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class Conv:
    src: int
    kernel: int
    bias: bool


Step = Linear | Act | Mul | Conv


def _width(step: Step, widths: list[int]) -> int:
    """Feature width of the value `step` produces, given the widths of the values before it."""
    return step.out if isinstance(step, Linear) else widths[step.a if isinstance(step, Mul) else step.src]


def _reads(step: Step) -> tuple[int, ...]:
    return (step.a, step.b) if isinstance(step, Mul) else (step.src,)


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    dtype: str  # model (activation) dtype, a key of FLOAT_KINDS
    lead: tuple[int, ...]  # x: [*lead, width0]; 1 or 2 leading dims
    width0: int
    steps: tuple[Step, ...]  # steps[i] produces v{i+1}
    outputs: tuple[int, ...]

    def widths(self) -> list[int]:
        w = [self.width0]
        for s in self.steps:
            w.append(_width(s, w))
        return w

    def __str__(self) -> str:
        lines = [f"x = v0: {self.dtype} {[*self.lead, self.width0]}"]
        for i, s in enumerate(self.steps, 1):
            if isinstance(s, Linear):
                rhs = f"linear[{s.kind}](v{s.src}, {s.out}{', bias' if s.bias else ''})"
            elif isinstance(s, Act):
                rhs = f"{s.fn}(v{s.src})"
            elif isinstance(s, Mul):
                rhs = f"mul(v{s.a}, v{s.b})"
            else:
                rhs = f"conv1d(v{s.src}, k={s.kernel}{', bias' if s.bias else ''})"
            lines.append(f"v{i} = {rhs}")
        lines.append("return " + ", ".join(f"v{i}" for i in self.outputs))
        return "\n".join(lines)

    def uses_bfloat16(self) -> bool:
        return self.dtype == "bfloat16" or any(isinstance(s, Linear) and s.kind == "bfloat16" for s in self.steps)

    def quantized_kinds(self) -> set[str]:
        return {s.kind for s in self.steps if isinstance(s, Linear) and s.kind in FORMATS}


# -- what must fuse -------------------------------------------------------------------------------


def _read_dtype(spec: GraphSpec, lin: Linear) -> str:
    """The dtype of the tensor a linear multiplies: its own for float, the model's for quantized."""
    return lin.kind if lin.kind in FLOAT_KINDS else spec.dtype


def _tiny_cpu_addmm(spec: GraphSpec, lin: Linear, k: int) -> bool:
    """A float linear with bias that Inductor's CPU decomposition of addmm turns into a product and
    a sum before any rule sees it (torch/_inductor/decomposition.py: one row of x, a weight of at
    most 16 x 16): no longer a linear the rules can fuse."""
    rows = 1
    for d in spec.lead:
        rows *= d
    return lin.kind in FLOAT_KINDS and lin.bias and rows == 1 and k <= 16 and lin.out <= 16


def expected_glu_pairs(spec: GraphSpec) -> list[tuple[int, int]]:
    """(gate, up) value ids of the products the `glu` family must fuse: mul(act(gate), up) with act
    SiLU or GELU-tanh, gate and up linears of one kind (a quantized format, or the model's float
    dtype and neither turned into a product and a sum by Inductor's CPU addmm decomposition) reading one
    value, both with or both without bias, and nothing else reading gate, act(gate) or up (not even
    the outputs)."""
    widths = spec.widths()
    readers = collections.Counter(i for s in spec.steps for i in _reads(s))
    readers.update(spec.outputs)

    def step(v: int):
        return spec.steps[v - 1] if v > 0 else None

    pairs = []
    for s in spec.steps:
        if not isinstance(s, Mul) or s.a == s.b:
            continue
        for act_v, up_v in ((s.a, s.b), (s.b, s.a)):
            act, up = step(act_v), step(up_v)
            if not (isinstance(act, Act) and act.fn in ("silu", "gelu_tanh") and isinstance(up, Linear)):
                continue
            gate = step(act.src)
            if not isinstance(gate, Linear) or act.src == up_v:
                continue
            if gate.kind != up.kind or gate.src != up.src or gate.bias != up.bias:
                continue
            if up.kind in FLOAT_KINDS and (
                up.kind != spec.dtype  # cast in and out (LinearStep): the product reads casts, not linears
                or any(_tiny_cpu_addmm(spec, lin, widths[up.src]) for lin in (gate, up))
            ):
                continue
            if up.kind not in FORMATS and up.kind not in FLOAT_KINDS:
                continue
            if readers[act.src] == 1 and readers[act_v] == 1 and readers[up_v] == 1:
                pairs.append((act.src, up_v))
                break
    return pairs


def expected_sibling_groups(spec: GraphSpec) -> list[tuple[Linear, ...]]:
    """Groups of >= 2 linears reading one tensor with compatible weights, in graph order, among the
    linears the `glu` family (which runs first) leaves.

    One tensor: the same value, read in the same dtype (two casts of one value are one tensor).
    Compatible: float of one dtype (K is the value's width, so equal), or one quantized format."""
    taken = {v for pair in expected_glu_pairs(spec) for v in pair}
    widths = spec.widths()
    groups: dict[tuple, list[Linear]] = collections.defaultdict(list)
    for v, s in enumerate(spec.steps, 1):
        if isinstance(s, Linear) and v not in taken and not _tiny_cpu_addmm(spec, s, widths[s.src]):
            groups[(s.src, _read_dtype(spec, s), s.kind)].append(s)
    return [tuple(g) for g in groups.values() if len(g) >= 2]


def expected_act_quant_groups(spec: GraphSpec) -> list[list[tuple[int, str]]]:
    """(value read, format) of the quantized linears that share one quantize_act: what `glu` and
    `siblings` leave (a GLU pair is one linear, a quantized sibling group one), grouped by the value
    they read and the activation layout of their format's matvec (KernelSpec.interleave); groups of
    two or more. (x has at most 8 rows here: every format's matvec takes them.)"""
    pairs = expected_glu_pairs(spec)
    taken = {v for pair in pairs for v in pair}
    widths = spec.widths()
    left = [(spec.steps[gate - 1].src, spec.steps[gate - 1].kind) for gate, _ in pairs]
    left = [(v, kind) for v, kind in left if kind in FORMATS]  # float GLU pairs quantize nothing
    # the quantized linears glu leaves: siblings fuses those of one (value, format) into one
    left += dict.fromkeys(
        (s.src, s.kind)
        for v, s in enumerate(spec.steps, 1)
        if isinstance(s, Linear) and s.kind in FORMATS and v not in taken
    )
    by_key: dict[tuple, list[tuple[int, str]]] = collections.defaultdict(list)
    for src, kind in left:
        assert widths[src] % 32 == 0 and kind in KERNELS
        by_key[(src, KERNELS[kind].interleave)].append((src, kind))
    return [g for g in by_key.values() if len(g) >= 2]


# -- the module -----------------------------------------------------------------------------------


class LinearStep(nn.Module):
    def __init__(self, step: Linear, dtype: torch.dtype, k: int):
        super().__init__()
        self.src = step.src
        self.cast = FLOAT_KINDS.get(step.kind, dtype)  # quantized: x stays in the model dtype
        self.dtype = dtype
        # quantized kinds start as float linears of the model dtype; quantize_ swaps them
        self.lin = nn.Linear(k, step.out, bias=step.bias, dtype=self.cast)

    def forward(self, vals: list[torch.Tensor]) -> torch.Tensor:
        # v: [..., K] -> [..., N]
        return self.lin(vals[self.src].to(self.cast)).to(self.dtype)


class ActStep(nn.Module):
    def __init__(self, step: Act):
        super().__init__()
        self.src, self.fn = step.src, step.fn

    def forward(self, vals):
        return ACTIVATIONS[self.fn](vals[self.src])


class MulStep(nn.Module):
    def __init__(self, step: Mul):
        super().__init__()
        self.a, self.b = step.a, step.b

    def forward(self, vals):
        return vals[self.a] * vals[self.b]


class ConvStep(nn.Module):
    """Depthwise causal conv1d over the token dim (the one before the features)."""

    def __init__(self, step: Conv, dtype: torch.dtype, channels: int):
        super().__init__()
        self.src, self.kernel = step.src, step.kernel
        self.weight = nn.Parameter(torch.randn(channels, 1, step.kernel, dtype=dtype) / step.kernel)
        self.bias = nn.Parameter(torch.randn(channels, dtype=dtype)) if step.bias else None

    def forward(self, vals):
        v = vals[self.src].transpose(-1, -2)  # [..., T, C] -> [..., C, T] (2-D: unbatched conv)
        t = v.shape[-1]
        # groups static, as nn.Conv1d has it (not v.shape[-2], a SymInt once the widths go dynamic)
        y = F.conv1d(v, self.weight, self.bias, groups=self.weight.shape[0], padding=self.kernel - 1)[..., :t]
        return y.transpose(-1, -2)


class RandomGraph(nn.Module):
    def __init__(self, spec: GraphSpec):
        super().__init__()
        dtype = FLOAT_KINDS[spec.dtype]
        widths = spec.widths()
        steps = []
        for s in spec.steps:
            if isinstance(s, Linear):
                steps.append(LinearStep(s, dtype, widths[s.src]))
            elif isinstance(s, Act):
                steps.append(ActStep(s))
            elif isinstance(s, Mul):
                steps.append(MulStep(s))
            else:
                steps.append(ConvStep(s, dtype, widths[s.src]))
        self.steps = nn.ModuleList(steps)
        self.outputs = spec.outputs

    def forward(self, x):
        vals = [x]
        for step in self.steps:
            vals.append(step(vals))
        return tuple(vals[i] for i in self.outputs)


def build_model(spec: GraphSpec, seed: int) -> RandomGraph:
    """A fresh model with seeded weights; linears of a quantized kind go through quantize_."""
    torch.manual_seed(seed)
    model = RandomGraph(spec).eval()
    names = {i: f"steps.{i}.lin" for i, s in enumerate(spec.steps) if isinstance(s, Linear)}
    for fmt in sorted(spec.quantized_kinds()):
        others = tuple(n for i, n in names.items() if spec.steps[i].kind != fmt)
        inductor_fuse.quantize_(model, inductor_fuse.QuantConfig(fmt=fmt, skip=others))
    return model


def make_input(spec: GraphSpec, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*spec.lead, spec.width0, generator=g).to(FLOAT_KINDS[spec.dtype])


# -- the strategy ---------------------------------------------------------------------------------


class _Builder:
    """Appends steps, reusing an identical Act / Mul (a compiler would CSE it anyway)."""

    def __init__(self, dtype: str, width0: int):
        self.dtype = dtype
        self.widths = [width0]
        self.steps: list[Step] = []

    def add(self, step: Step) -> int:
        if isinstance(step, Mul) and step.a > step.b:
            step = Mul(step.b, step.a)
        if not isinstance(step, (Linear, Conv)) and step in self.steps:
            return self.steps.index(step) + 1
        self.steps.append(step)
        self.widths.append(_width(step, self.widths))
        return len(self.steps)

    def kinds_for(self, width: int) -> list[str]:
        """Weight kinds a linear reading a value of this width may have: model dtype first."""
        other = "bfloat16" if self.dtype == "float32" else "float32"
        return [self.dtype, other] + [f for f, fmt in FORMATS.items() if width % fmt.block_size == 0]


@st.composite
def graph_specs(draw, max_steps: int = 6) -> GraphSpec:
    dtype = draw(st.sampled_from(["float32", "float32", "bfloat16"]))
    lead = draw(st.one_of(st.tuples(st.integers(1, 5)), st.tuples(st.integers(1, 2), st.integers(1, 4))))
    b = _Builder(dtype, draw(st.sampled_from(INPUT_WIDTHS)))

    def value() -> int:  # the newest value half the time: chains (a group reading a group's output)
        newest = len(b.widths) - 1
        return draw(st.one_of(st.integers(0, newest), st.just(newest)))

    def linear(src: int, kind: str | None = None, out: int | None = None) -> int:
        kinds = b.kinds_for(b.widths[src])
        kind = kind if kind in kinds else draw(st.sampled_from(kinds))
        out = out or draw(st.sampled_from(OUT_WIDTHS))
        return b.add(Linear(src, out, draw(st.booleans()), kind))

    n_moves = draw(st.integers(1, max_steps))
    for _ in range(n_moves):
        move = draw(st.sampled_from(["fanout", "glu", "linear", "act", "mul", "conv"]))
        if move == "fanout":  # 2-4 linears on one value, mostly of one kind
            src = value()
            kind = draw(st.sampled_from(b.kinds_for(b.widths[src])))
            for _ in range(draw(st.integers(2, 4))):
                linear(src, kind if draw(st.sampled_from([True, True, False])) else None)
        elif move == "glu":  # act(a(v)) * b(v)
            src = value()
            kind = draw(st.sampled_from(b.kinds_for(b.widths[src])))
            out = draw(st.sampled_from(OUT_WIDTHS))
            gate = b.add(Act(linear(src, kind, out), draw(st.sampled_from(sorted(ACTIVATIONS)))))
            b.add(Mul(gate, linear(src, kind if draw(st.booleans()) else None, out)))
        elif move == "linear":
            linear(value())
        elif move == "act":
            b.add(Act(value(), draw(st.sampled_from(sorted(ACTIVATIONS)))))
        elif move == "mul":
            a = value()
            same = [i for i, w in enumerate(b.widths) if w == b.widths[a]]
            b.add(Mul(a, draw(st.sampled_from(same))))
        else:
            b.add(Conv(value(), draw(st.integers(1, 4)), draw(st.booleans())))

    read = {i for s in b.steps for i in _reads(s)}
    n = len(b.widths)
    sinks = [i for i in range(1, n) if i not in read]
    extra = draw(st.lists(st.sampled_from(sorted(read - {0}) or [n - 1]), max_size=2, unique=True))
    outputs = tuple(sorted(set(sinks) | set(extra))) or (n - 1,)
    return GraphSpec(dtype, lead, b.widths[0], tuple(b.steps), outputs)
