"""Compile a few-rows tensor-core kernel for a GPU without having one, and count what its K loop
executes, as benchmarks/sass_matvec.py does for the matvecs: the Q4_K `int8_mma` (W4A8, per thread
and unit of 64 weights), `w4a16_mma` (Q4_K or Q6_K, per thread and K step) or `w4a16_sync` (Q4_K or
Q6_K, per thread and 256-weight block; compiled through its own launcher, `w4a16_sync.w4a16_sync`
on CPU tensors, with a stand-in driver that names an sm_90 target and turns every launch into a
compile: the launcher's arguments and specializations are the ones a GPU call would compile).

    python benchmarks/sass_mma.py                                   # int8_mma, its default config at M = 16
    python benchmarks/sass_mma.py --block-n 32 --num-warps 1        # a 1-warp int8_mma program (mma.sync)
    python benchmarks/sass_mma.py --kernel w4a16_mma                # w4a16_mma, its default config at M = 16
    python benchmarks/sass_mma.py --kernel w4a16_mma --fmt q6_k     # its Q6_K kernel
    python benchmarks/sass_mma.py --kernel w4a16_mma --dump /tmp/w  # cubin, ttgir, ptx, sass files
    python benchmarks/sass_mma.py --kernel w4a16_sync --fmt q6_k --m 16 --split 2  # w4a16_sync
    python benchmarks/sass_mma.py --json                            # one JSON line

A reading aid, not a measurement (speed: bench_kernels.py --small-m on the GPU). Issue bound of a
call: the weights / the weights one warp covers per loop pass x the loop's instructions = warp
instructions, over 4 issued per SM and clock ("issue_us" below: a 28672 x 4096 weight, gate_up's, on
132 SMs at 1.98 GHz).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sass_matvec import inspect_kernel  # noqa: E402

from inductor_fuse.kernels import int8_mma, w4a16_mma  # noqa: E402
from inductor_fuse.kernels.testing import random_planes  # noqa: E402

POINTERS = {
    "int8_mma": {
        "xq_ptr": "*i8", "xd_ptr": "*fp32", "xs_ptr": "*fp32", "qs_ptr": "*u8", "sm_ptr": "*i32",
        "dm_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*fp32",
    },
    "w4a16_mma": {
        "x_ptr": "*bf16", "qs_ptr": "*u8", "sm_ptr": "*i32", "dm_ptr": "*i32", "bias_ptr": "*bf16", "out_ptr": "*fp32",
    },
    "w4a16_mma q6_k": {
        "x_ptr": "*bf16", "ql_ptr": "*u8", "qh_ptr": "*u8", "sc_ptr": "*i32", "d_ptr": "*fp16", "bias_ptr": "*bf16",
        "out_ptr": "*fp32",
    },
}  # fmt: skip
GATE_UP = 28672 * 4096


def inspect_mma(kernel: str, fmt: str, block_n: int, num_warps: int, num_stages: int, dump=None, **constants) -> dict:
    """`sass_matvec.inspect_kernel` of the kernel's `fmt` variant compiled for sm_90 (split-K)."""
    fns = {
        ("int8_mma", "q4_k"): int8_mma._q4k_mma_kernel,
        ("w4a16_mma", "q4_k"): w4a16_mma._q4k_w4a16_kernel,
        ("w4a16_mma", "q6_k"): w4a16_mma._q6k_w4a16_kernel,
    }
    fn = fns[kernel, fmt]
    constants = dict(HAS_BIAS=False, SPLIT=True, BLOCK_M=16, BLOCK_N=block_n, **constants)
    pointers = POINTERS[kernel if fmt == "q4_k" else f"{kernel} {fmt}"]
    signature = {a: "constexpr" if a in constants else pointers.get(a, "i32") for a in fn.arg_names}
    divisible = set(pointers) | {"N", "K", "UNITS_PER_SPLIT"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in divisible}
    k = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )
    return inspect_kernel(k, f"{fmt}_{kernel}", dump)


class _CompileOnly:
    """The driver Triton asks for a device, a stream and a target: sm_90, no device."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def compiling_only(compiled: dict):
    """Within: a kernel launch compiles for sm_90 (no device) and records the compiled kernel in
    `compiled` under its function's name instead of running (launchers that read a launch's
    result would fail: none of ours does)."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        compiled[self.__name__] = run(self, *args, grid=grid, warmup=True, **kwargs)
        return compiled[self.__name__]

    active = driver._active  # (reset_active would build the default driver, which needs a GPU)
    driver.set_active(_CompileOnly())
    JITFunction.run = compile_only
    try:
        yield compiled
    finally:
        JITFunction.run = run
        driver._active = active


def compile_sync(fmt: str, M: int, config, dtype, N: int = 4096, K: int = 4096) -> dict:
    """w4a16_sync's kernel for `fmt` as its launcher compiles it for (M, N, K, config, x's dtype)
    on sm_90 -> the compiled kernel (every launch of the call, the split-K sum's too, only compiles)."""
    import torch

    from inductor_fuse.kernels import w4a16_sync

    with compiling_only({}) as compiled:
        x = torch.randn(M, K).to(dtype)
        w4a16_sync.w4a16_sync(x, random_planes(fmt, N, K), None, fmt, config)
    return compiled["_w4a16_sync_kernel"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", choices=("int8_mma", "w4a16_mma", "w4a16_sync"), default="int8_mma")
    ap.add_argument("--fmt", choices=("q4_k", "q6_k"), default="q4_k", help="q6_k: not for int8_mma")
    ap.add_argument("--block-n", type=int)
    ap.add_argument("--block-u", type=int, help="w4a16_mma: units per K step")
    ap.add_argument("--num-warps", type=int)
    ap.add_argument("--num-stages", type=int)
    ap.add_argument("--unroll", type=int, help="w4a16_mma: K steps per loop pass (the loop read as one step)")
    ap.add_argument("--x-first", action="store_true", help="int8_mma: x as the dot's first operand")
    ap.add_argument("--m", type=int, default=8, help="w4a16_sync: rows of x (8 or 16 compile differently)")
    ap.add_argument("--reps", type=int, default=1, help="w4a16_sync: 16-row tiles per warp")
    ap.add_argument("--split", type=int, default=1, help="w4a16_sync: K split")
    ap.add_argument("--fp16", action="store_true", help="w4a16_sync: fp16 x (default bf16)")
    ap.add_argument("--prefetch", type=int, default=1, help="w4a16_sync: blocks on that a step loads (1, 2)")
    ap.add_argument("--xstages", type=int, default=0, help="w4a16_sync: x's shared-memory ring (0: none)")
    ap.add_argument("--dump", help="a folder for the cubin, ttgir, ptx and sass")
    ap.add_argument("--json", action="store_true", help="one JSON line: registers, loop length, opcode mix")
    args = ap.parse_args()
    if args.kernel == "w4a16_sync":
        return main_sync(args)
    if args.kernel == "int8_mma":
        cfg = int8_mma.default_config("q4_k", 16, 28672, 4096)
        units = 1
        extra = dict(WT=not args.x_first)
    elif args.fmt == "q4_k":
        cfg = w4a16_mma.default_config("q4_k", 16)
        units = args.block_u or cfg.block_u
        extra = dict(BLOCK_U=units, USE_ASM=True, UNROLL=args.unroll or cfg.unroll)
    else:  # Q6_K: one 128-weight unit a step, counted as two 64-weight ones
        cfg = w4a16_mma.default_config("q6_k", 16)
        units = 2
        extra = dict(USE_ASM=True, UNROLL=args.unroll or cfg.unroll)
    if args.kernel == "int8_mma" and args.fmt != "q4_k":
        ap.error("int8_mma: --fmt q4_k only")
    block_n, warps = args.block_n or cfg.block_n, args.num_warps or cfg.num_warps
    r = inspect_mma(args.kernel, args.fmt, block_n, warps, args.num_stages or cfg.num_stages, args.dump, **extra)
    n = len(r["loop"])
    steps = extra.get("UNROLL", 1)  # K steps per loop pass
    weights_per_warp = block_n * 64 * units * steps / warps  # one loop pass (units of 64 weights)
    issue_us = GATE_UP / weights_per_warp * n / (4 * 132 * 1.98e3)
    if args.json:
        print(json.dumps({**r, "loop": n, "units": units, "steps": steps, "mix": dict(r["mix"]), "issue_us": issue_us}))
        return
    print(f"triton {triton.__version__}, sm_90, {args.kernel} {args.fmt}: block_n {block_n}, {warps} warps")
    print(f"{r['registers']} registers, stack {r['stack']} bytes")
    per = "step" if steps == 1 else f"loop pass ({steps} steps: {n / steps:.0f} a step)"
    print(f"K loop: {n} instructions per thread and {per}, {weights_per_warp / n:.1f} weights per warp instruction")
    print(f"28672 x 4096 weight issue bound: {issue_us:.1f} us")
    print("  " + ", ".join(f"{op} {c}" for op, c in r["mix"].most_common()))


def main_sync(args) -> None:
    import torch

    from inductor_fuse.kernels.w4a16_sync import SyncConfig

    cfg = SyncConfig(args.num_warps or 4, args.reps, args.split, prefetch=args.prefetch, xstages=args.xstages)
    k = compile_sync(args.fmt, args.m, cfg, torch.float16 if args.fp16 else torch.bfloat16)
    r = inspect_kernel(k, f"{args.fmt}_w4a16_sync", args.dump)
    n = len(r["loop"])
    weights_per_warp = 16 * cfg.reps * 256  # one block of the warp's rows a loop pass
    issue_us = GATE_UP / weights_per_warp * n / (4 * 132 * 1.98e3)
    if args.json:
        lds128 = sum(1 for line in r["loop"] if "LDS.128" in line)  # (predicated-off LDS RZ are not loads)
        print(json.dumps({**r, "loop": n, "mix": dict(r["mix"]), "issue_us": issue_us, "lds128": lds128}))
        return
    print(f"triton {triton.__version__}, sm_90, w4a16_sync {args.fmt}: M = {args.m}, {cfg}")
    print(f"{r['registers']} registers, stack {r['stack']} bytes")
    print(f"K loop: {n} instructions per thread and block, {weights_per_warp / n:.1f} weights per warp instruction")
    print(f"28672 x 4096 weight issue bound: {issue_us:.1f} us")
    print("  " + ", ".join(f"{op} {c}" for op, c in r["mix"].most_common()))


if __name__ == "__main__":
    main()
