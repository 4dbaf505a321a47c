"""Compile the decode step's kernels as programmatic dependent launches (PDL, docs/kernels.md
"PDL") for sm_90 without a GPU, each through its own launcher, and print where their global loads
sit against `griddepcontrol.wait` (SASS `ACQBULK`) and `griddepcontrol.launch_dependents`
(`PREEXIT`). What correctness asks of the order: a kernel launched this way may start while the
kernel before it still runs, so it must not read anything another kernel writes before its wait.
The small kernels load nothing before it; the matvec loads only its first weights (constants)
before it, and asks L2 for its next ones (`CCTL`, config.settings.l2_prefetch, where it triggers
early); launch_dependents comes after the wait (right after it, but in the attention's split
kernel after its loop: after all its loads; with `--early 0`, config.settings.pdl_early off, in
the norm, act_quant and merge kernels only).

    python benchmarks/sass_pdl.py          # a table
    python benchmarks/sass_pdl.py --early 0   # the kernels as INDUCTOR_FUSE_PDL_EARLY=0 compiles them
    python benchmarks/sass_pdl.py --json   # {kernel: {"loads_before_wait", "loads_after_wait", ...}}

A reading aid and the check behind tests/kernels/test_sass.py, as sass_matvec.py: speed is
measured on the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_matvec import disassemble, opcode  # noqa: E402
from sass_mma import compiling_only  # noqa: E402

from inductor_fuse import config  # noqa: E402
from inductor_fuse.kernels import _common, decode_attention, norm_quant, rope_cache  # noqa: E402
from inductor_fuse.kernels.registry import KERNELS  # noqa: E402
from inductor_fuse.kernels.testing import random_planes  # noqa: E402
from inductor_fuse.quant.op import empty_quantized_activation  # noqa: E402


class _OnCuda(torch.Tensor):
    """A CPU tensor whose launchers take it for a CUDA one (they check `is_cuda`); nothing runs."""

    @property
    def is_cuda(self) -> bool:
        return True


def _t(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype).as_subclass(_OnCuda)


def _matvec(M: int, N: int = 1024, K: int = 4096) -> torch.Tensor:
    spec = KERNELS["q4_k"]
    planes = [p.as_subclass(_OnCuda) for p in spec.plane_views(random_planes("q4_k", N, K))]
    xa = _common.QuantizedActivation(
        *(t.as_subclass(_OnCuda) for t in empty_quantized_activation(torch.empty(M, K, dtype=torch.bfloat16)))
    )
    return _common.launch_matvec(spec, xa, planes, None, M, N, K, spec.matvec_config(M, N, K), torch.bfloat16)


def _launches() -> dict[str, object]:
    """launch name -> a call of a launcher at Llama-3-8B decode shapes (M = 1 but where named)."""
    K, Hq, Hkv, D, T = 4096, 32, 8, 128, 1024
    return {
        "rmsnorm_quantize": lambda: norm_quant.rmsnorm_quantize(
            _t(1, K), _t(K), 1e-5, 0.0, False, False, True, residual=_t(1, K)
        ),
        "act_quant": lambda: _common.act_quant(_t(1, K)),
        "rope_cache_write": lambda: rope_cache.rope_cache_write_cuda(
            _t(1, 1, Hq, D),
            _t(1, 1, Hkv, D),
            _t(1, 1, Hkv, D),
            _t(1, D, dtype=torch.float32),
            _t(1, D, dtype=torch.float32),
            None,
            None,
            1e-6,
            0.0,
            False,
            _t(2, 1, Hkv, T, D),
            torch.zeros(1, dtype=torch.int64).as_subclass(_OnCuda),
        ),  # fmt: skip
        "decode_attention": lambda: decode_attention.decode_attention_cuda(
            _t(1, Hq, 1, D),
            _t(1, Hkv, T, D),
            _t(1, Hkv, T, D),
            torch.ones(1, 1, 1, T, dtype=torch.bool).as_subclass(_OnCuda),
            D**-0.5,
            0.0,
            num_splits=4,
            quantize=False,
        ),  # fmt: skip
        "matvec M=1": lambda: _matvec(1),
        "matvec M=2 (prefetch)": lambda: _matvec(2),
        "matvec M=1 (l2_prefetch 0)": lambda: _matvec_no_l2(1),
    }


def _matvec_no_l2(M: int) -> torch.Tensor:
    """The matvec with config.settings.l2_prefetch off (by default, where it triggers early, it asks
    L2 for its next weights before the wait)."""
    with config.patch(l2_prefetch=0):
        return _matvec(M)


@contextlib.contextmanager
def _compile_only(compiled: dict[str, object], early: bool):
    """sass_mma.compiling_only, with the launchers taking PDL as on for any device (each module
    holds its own name for `pdl` and `pdl_launch`) and config.settings.pdl_early as `early`."""
    modules = (_common, norm_quant, decode_attention, rope_cache)
    saved = [(m, m.pdl, m.pdl_launch) for m in modules]
    for m in modules:
        m.pdl, m.pdl_launch = (lambda device: True), (lambda device: {"launch_pdl": True})
    try:
        with compiling_only(compiled), config.patch(pdl_early=early):
            yield
    finally:
        for m, f, g in saved:
            m.pdl, m.pdl_launch = f, g


def order(k) -> list[str]:
    """A compiled kernel's global loads (LDG, and LDGSTS: global -> shared), PDL wait (ACQBULK) and
    trigger (PREEXIT), in SASS order; both load kinds as "LDG"."""
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        sass = disassemble(cubin)
    lines = [x for x in sass.splitlines() if re.match(r"^\s+/\*[0-9a-f]{4}\*/", x)]
    ops = [op for op in map(opcode, lines) if op in ("LDG", "LDGSTS", "ACQBULK", "PREEXIT", "CCTL")]
    return ["LDG" if op == "LDGSTS" else op for op in ops]


def summarize(ops: list[str]) -> dict:
    wait = ops.index("ACQBULK") if "ACQBULK" in ops else None
    return {
        "waits": ops.count("ACQBULK"),
        "loads_before_wait": ops[:wait].count("LDG") if wait is not None else None,
        "loads_after_wait": ops[wait:].count("LDG") if wait is not None else None,
        "l2_prefetches_before_wait": ops[:wait].count("CCTL") if wait is not None else None,
        "triggers": ops.count("PREEXIT"),
        "trigger_after_wait": None if "PREEXIT" not in ops or wait is None else ops.index("PREEXIT") > wait,
        "loads_after_trigger": ops[ops.index("PREEXIT") :].count("LDG") if "PREEXIT" in ops else None,
    }


def inspect(early: bool = True) -> dict[str, dict]:
    """ "launch: kernel" -> summarize() of the kernel's SASS, for every kernel each launch above
    compiles (with config.settings.pdl_early as `early`)."""
    r = {}
    for launch, call in _launches().items():
        compiled: dict[str, object] = {}
        with _compile_only(compiled, early):
            call()
        r.update({f"{launch}: {name}": summarize(order(k)) for name, k in compiled.items()})
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--early", type=int, choices=(0, 1), default=1, help="config.settings.pdl_early (default 1)")
    args = ap.parse_args()
    r = inspect(bool(args.early))
    if args.json:
        print(json.dumps(r))
        return
    print(f"{'launch: kernel':47} waits  loads before / after the wait  L2 prefetches before it  "
          "triggers (after the wait)  loads after it")  # fmt: skip
    for name, s in r.items():
        print(f"{name:47} {s['waits']:5}  {s['loads_before_wait']!s:>12} / {s['loads_after_wait']!s:<14}  "
              f"{s['l2_prefetches_before_wait']!s:>23}  "
              f"{s['triggers']} ({s['trigger_after_wait']!s:5})             {s['loads_after_trigger']}")  # fmt: skip


if __name__ == "__main__":
    main()
