"""Every knob of inductor_fuse, with its default: read once from the environment at import.

    variable                        setting            default   what it does
    INDUCTOR_FUSE_EXACT_MATVEC=1    exact_matvec       False     CUDA qlinear sends every M to the fused GEMM (qgemm):
                                                                 the activation stays float (no int8 rounding of x
                                                                 as in the W4A8 matvec), slower at every M (about
                                                                 2x dequantize + cuBLAS at M = 512); the act_quant
                                                                 rule's quantize_act then launches nothing
    INDUCTOR_FUSE_GEMM=fused        gemm               "auto"    "auto": above a format's matvec range, the fused
                                                                 Triton GEMM up to its fused_gemm_max_m, then
                                                                 dequantize + cuBLAS; "fused": the fused GEMM for
                                                                 every M above the matvec range
    INDUCTOR_FUSE_NO_TUNE=1         no_tune            False     never benchmark kernel configs: every call takes
                                                                 the measured default
    INDUCTOR_FUSE_TUNE=1            tune               False     also tune the matvec configs (the GEMM configs are
                                                                 tuned by default, the matvec's are not: their
                                                                 measured defaults beat what a one-launch timing
                                                                 picks)
    INDUCTOR_FUSE_GLU_QUANT=1       glu_quant          False     the GLU matvec quantizes its output for the down
                                                                 projection in its epilogue (programs of 64 rows,
                                                                 one act_quant launch fewer per layer); off: the
                                                                 GLU matvec, then act_quant (the same numbers)
    INDUCTOR_FUSE_SMALL_M=sync      small_m            "auto"    "auto": the dispatch of kernels/dispatch.py
                                                                 (kernels/w4a16_sync.py, W4A16 on mma.sync, where
                                                                 a format's spec measured it fastest: Q4_K
                                                                 and Q6_K at M = 3..16, bf16 / fp16 x); "sync":
                                                                 every Q4_K / Q6_K call of 1-16 rows of bf16 /
                                                                 fp16 x runs w4a16_sync (slower than the matvec
                                                                 at M = 1, 2); "off": never (the matvec and
                                                                 w4a16_mma there instead); a rewrite reads it
                                                                 (the act_quant rule: rewrite_key)
                                                                 (docs/kernels.md, "A few rows")
    INDUCTOR_FUSE_PDL=0             pdl                True      "1": the project's CUDA kernels are programmatic
                                                                 dependent launches (sm_90+ only): each starts
                                                                 while the kernel before it still runs and waits
                                                                 for it (griddepcontrol.wait) before reading its
                                                                 input; the W4A8 matvec loads its first weights
                                                                 before that wait; "0": plain launches
                                                                 (docs/kernels.md, "PDL")
    INDUCTOR_FUSE_PDL_EARLY=auto    pdl_early          "auto"    with pdl, True ("1"): the matvec and the rope kernel
                                                                 also let the kernel after them launch as soon as
                                                                 their own programs have started (launch_dependents
                                                                 after their wait; it still waits for their whole
                                                                 grid), and the attention's split kernel lets the
                                                                 merge launch once its programs are past their
                                                                 loop; False ("0"): those kernels' dependents launch
                                                                 as they end; "auto": True in a graph the backend
                                                                 compiled whose linear weights total at least
                                                                 PDL_EARLY_MIN_WEIGHT_BYTES (2 GiB: Llama-3-8B on,
                                                                 Gemma-3-270M and Llama-3.2-1B off), False in a
                                                                 smaller one, True outside a compiled graph
                                                                 (`pdl_early_wanted`; docs/kernels.md, "PDL")
    INDUCTOR_FUSE_FULL_FAKE_PROP=1  full_fake_prop     False     Inductor's freezing passes re-propagate fake tensors
                                                                 through the whole graph (torch's own behaviour) in
                                                                 our compiles; default: only through the nodes whose
                                                                 values can have changed (inductor_fuse/freezing.py)
    INDUCTOR_FUSE_FROZEN_CACHE=0    frozen_cache       True      a warm start of a graph compiled before (same graph,
                                                                 shapes, configs, torch, GPU) skips AOT, the rules and
                                                                 freezing: the frozen constants are re-made from the
                                                                 model's own tensors by the recipes recorded cold and
                                                                 the code comes from Inductor's FX graph cache
                                                                 (inductor_fuse/frozen_cache.py); "0": every compile
                                                                 runs them
    INDUCTOR_FUSE_L2_PREFETCH=16    l2_prefetch        8         where the W4A8 matvec triggers early (pdl_early: by
                                                                 default in graphs of 2 GiB of linear weights or
                                                                 more), it asks L2 for this many more K units of
                                                                 each of its rows' weights (every plane) before its
                                                                 griddepcontrol.wait, after its first step's loads:
                                                                 HBM streams them while the kernel before it still
                                                                 runs; "0": off (L2_PREFETCH_UNITS; docs/kernels.md,
                                                                 "PDL")
    (no variable)                   on_matvec_launch   None      called with the compiled kernel after every matvec
                                                                 launch (benchmarks read registers, spills, asm)

A boolean variable is on when it is "1" (INDUCTOR_FUSE_PDL and INDUCTOR_FUSE_FROZEN_CACHE, on by
default: off when it is "0";
INDUCTOR_FUSE_PDL_EARLY: "1", "0" or "auto", the default).
Code reads `config.settings.<name>` at call time (so a `from inductor_fuse.config import settings`
would miss `patch`); tests and benchmarks change
settings for a block with

    with config.patch(exact_matvec=True):
        ...

Not here: TRITON_INTERPRET (Triton's own; `kernels._common.interpreting()` reads it), the test
suite's INDUCTOR_FUSE_GPU_TESTS, INDUCTOR_FUSE_PROPERTY_EXAMPLES and GGUF_FUZZ_* (tests/), and the
benchmarks' BENCH_JSON and OUT (benchmarks/).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

GEMM_MODES = ("auto", "fused")
SMALL_M_MODES = ("auto", "sync", "off")
# pdl_early "auto": the early trigger in a compiled graph whose linear weights total at least this.
# Measured (H100, decode at 512, docs/kernels.md "PDL"): Llama-3-8B Q4_K_M (4.3 GiB of them) +3.3% with
# it; Llama-3.2-1B (0.74 GiB) -1.7%, inside the runs' spread; the real Gemma-3-270M (0.23 GiB) -8.9%.
PDL_EARLY_MIN_WEIGHT_BYTES = 2 * 2**30
# l2_prefetch's default, K units a matvec row asks of L2 before its wait (where it triggers early).
# Measured (H100, Llama-3-8B Q4_K_M decode at 512, docs/kernels.md "PDL"): 4 +0.8%, 8 +1.0% / +1.3%,
# 16 +0.7% / +0.9%, 48 -4.0%, a program's whole range -6.1%; on Llama-3.2-1B (no early trigger) 8 gave -1.9%.
L2_PREFETCH_UNITS = 8


@dataclasses.dataclass(frozen=True)
class Settings:
    """The knobs (see the module docstring); `settings` is the instance in force."""

    exact_matvec: bool = False
    gemm: str = "auto"
    no_tune: bool = False
    tune: bool = False
    glu_quant: bool = False
    small_m: str = "auto"
    pdl: bool = True
    pdl_early: bool | str = "auto"  # True, False or "auto" ("1" / "0" taken for True / False)
    full_fake_prop: bool = False
    frozen_cache: bool = True
    l2_prefetch: int = L2_PREFETCH_UNITS
    on_matvec_launch: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if self.gemm not in GEMM_MODES:
            raise ValueError(f"inductor_fuse: gemm (INDUCTOR_FUSE_GEMM) must be one of {GEMM_MODES}, got {self.gemm!r}")
        if self.small_m not in SMALL_M_MODES:
            raise ValueError(
                f"inductor_fuse: small_m (INDUCTOR_FUSE_SMALL_M) must be one of {SMALL_M_MODES}, got {self.small_m!r}"
            )
        if not isinstance(self.l2_prefetch, int) or self.l2_prefetch < 0:
            raise ValueError(
                f"inductor_fuse: l2_prefetch (INDUCTOR_FUSE_L2_PREFETCH) must be a count of K units >= 0, "
                f"got {self.l2_prefetch!r}"
            )
        early = self.pdl_early
        if isinstance(early, str):
            early = {"1": True, "0": False}.get(early, early)
        if early not in (True, False, "auto"):
            raise ValueError(
                f"inductor_fuse: pdl_early (INDUCTOR_FUSE_PDL_EARLY) must be 1, 0 or auto, got {self.pdl_early!r}"
            )
        object.__setattr__(self, "pdl_early", early)


def _count(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"inductor_fuse: {name} must be a whole number, got {text!r}") from None


def from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings the INDUCTOR_FUSE_* variables of `environ` ask for (defaults for the rest)."""
    return Settings(
        exact_matvec=environ.get("INDUCTOR_FUSE_EXACT_MATVEC", "0") == "1",
        gemm=environ.get("INDUCTOR_FUSE_GEMM", "") or "auto",
        no_tune=environ.get("INDUCTOR_FUSE_NO_TUNE", "0") == "1",
        tune=environ.get("INDUCTOR_FUSE_TUNE", "0") == "1",
        glu_quant=environ.get("INDUCTOR_FUSE_GLU_QUANT", "0") == "1",
        small_m=environ.get("INDUCTOR_FUSE_SMALL_M", "") or "auto",
        pdl=environ.get("INDUCTOR_FUSE_PDL", "1") != "0",
        pdl_early=environ.get("INDUCTOR_FUSE_PDL_EARLY", "") or "auto",
        full_fake_prop=environ.get("INDUCTOR_FUSE_FULL_FAKE_PROP", "0") == "1",
        frozen_cache=environ.get("INDUCTOR_FUSE_FROZEN_CACHE", "1") != "0",
        l2_prefetch=_count(
            environ.get("INDUCTOR_FUSE_L2_PREFETCH", "") or str(L2_PREFETCH_UNITS), "INDUCTOR_FUSE_L2_PREFETCH"
        ),
    )


settings: Settings = from_env()


@contextmanager
def patch(**overrides: Any) -> Iterator[Settings]:
    """Run a block with some settings changed, e.g. `with config.patch(tune=True): ...`."""
    global settings
    saved = settings
    settings = dataclasses.replace(settings, **overrides)
    try:
        yield settings
    finally:
        settings = saved


# pdl_early "auto" in the compiled graph being run: set by the backend around each call of a graph it
# compiled (backend.inductor_fuse_backend), None outside one.
graph_pdl_early: ContextVar[bool | None] = ContextVar("inductor_fuse_graph_pdl_early", default=None)


def pdl_early_for(weight_bytes: int) -> bool:
    """pdl_early "auto" for a graph whose linear weights total `weight_bytes`."""
    return weight_bytes >= PDL_EARLY_MIN_WEIGHT_BYTES


def pdl_early_wanted() -> bool:
    """settings.pdl_early resolved: True or False as set; "auto": the choice of the compiled graph being
    run (`graph_pdl_early`), True outside one (a kernel called directly, a benchmark)."""
    early = settings.pdl_early
    if early == "auto":
        chosen = graph_pdl_early.get()
        return True if chosen is None else chosen
    return early


def rewrite_key() -> str:
    """The settings a compile's rewrite depends on (the act_quant rule asks kernels/dispatch.kernel_for
    which kernel reads an activation): part of the rule pass's uuid, so Inductor's FX graph cache
    never serves a graph rewritten under other settings."""
    return f"exact_matvec={settings.exact_matvec},small_m={settings.small_m}"
