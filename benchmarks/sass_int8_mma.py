"""Compile the Q4_K int8_mma kernel for a GPU without having one, and count what its K loop executes
per thread and unit (64 weights of K), as benchmarks/sass_matvec.py does for the matvecs.

    python benchmarks/sass_int8_mma.py                              # the default config at M = 16
    python benchmarks/sass_int8_mma.py --block-n 32 --num-warps 1  # a 1-warp program (mma.sync)
    python benchmarks/sass_int8_mma.py --dump /tmp/mma              # cubin, ttgir, ptx, sass files
    python benchmarks/sass_int8_mma.py --json                       # one JSON line

A reading aid, not a measurement (speed: bench_kernels.py --small-m on the GPU). Issue bound of a
call: N / (32 rows a warp) x K / 64 units x the loop's instructions = warp instructions, over 4
issued per SM and clock.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sass_matvec import inspect_kernel  # noqa: E402

from inductor_fuse.kernels import int8_mma  # noqa: E402

POINTERS = {
    "xq_ptr": "*i8", "xd_ptr": "*fp32", "xs_ptr": "*fp32", "qs_ptr": "*u8", "sm_ptr": "*i32",
    "dm_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*fp32",
}  # fmt: skip


def inspect_q4k(block_n: int, block_m: int, num_warps: int, num_stages: int, weights_first: bool, dump=None) -> dict:
    """`sass_matvec.inspect_kernel` of the Q4_K int8_mma kernel compiled for sm_90."""
    fn = int8_mma._q4k_mma_kernel
    constants = dict(HAS_BIAS=False, SPLIT=True, BLOCK_M=block_m, BLOCK_N=block_n, WT=weights_first)
    signature = {a: "constexpr" if a in constants else POINTERS.get(a, "i32") for a in fn.arg_names}
    divisible = set(POINTERS) | {"N", "K", "UNITS_PER_SPLIT"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in divisible}
    k = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )
    return inspect_kernel(k, "q4k_mma", dump)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = int8_mma.default_config("q4_k", 16, 28672, 4096)
    ap.add_argument("--block-n", type=int, default=default.block_n)
    ap.add_argument("--block-m", type=int, default=default.block_m)
    ap.add_argument("--num-warps", type=int, default=default.num_warps)
    ap.add_argument("--num-stages", type=int, default=default.num_stages)
    ap.add_argument("--x-first", action="store_true", help="x as the dot's first operand")
    ap.add_argument("--dump", help="a folder for the cubin, ttgir, ptx and sass")
    ap.add_argument("--json", action="store_true", help="one JSON line: registers, loop length, opcode mix")
    args = ap.parse_args()
    r = inspect_q4k(args.block_n, args.block_m, args.num_warps, args.num_stages, not args.x_first, args.dump)
    if args.json:
        print(json.dumps({**r, "loop": len(r["loop"]), "mix": dict(r["mix"])}))
        return
    print(f"triton {triton.__version__}, sm_90: {r['registers']} registers, stack {r['stack']} bytes")
    print(f"K loop: {len(r['loop'])} instructions per thread and unit")
    print("  " + ", ".join(f"{op} {n}" for op, n in r["mix"].most_common()))


if __name__ == "__main__":
    main()
