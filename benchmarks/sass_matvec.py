"""Compile one weight format's W4A8 matvec for a GPU without having one, and count what its K loop
executes: registers, spills and the instruction mix of the loop body, per thread and K step.

    python benchmarks/sass_matvec.py iq4_xs                    # the format's M = 1 default config
    python benchmarks/sass_matvec.py q6_k --block-n 2 --block-u 16 --num-warps 1 --block-m 8
    python benchmarks/sass_matvec.py q4_k --no-even --dump /tmp/q4k   # masked loop; ttgir / ptx / sass files
    python benchmarks/sass_matvec.py q6_k --K 14336 --json            # unmasked and masked loops, one JSON line

Triton compiles for the target given (sm_90 by default: the H200) with the ptxas and nvdisasm its
wheel ships, so this runs on a CPU-only machine. It is a reading aid for kernel work (a layout
conversion in the loop shows as SHFL, or BAR + STS / LDS; masked loads as CS2R zero-fills), not
a measurement: speed is claimed only from bench_kernels.py on the GPU. The kernel is
matvec_kernel as the launcher specializes it (pointers and strides 16-divisible, the format's
LOAD / DECODE / ROW_DOT); the loop is the first backward branch's body in the SASS.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inductor_fuse.kernels import _common  # noqa: E402
from inductor_fuse.kernels._common import matvec_block_m  # noqa: E402
from inductor_fuse.kernels.registry import KERNELS  # noqa: E402
from inductor_fuse.quant.formats import FORMATS  # noqa: E402

TRITON_TYPES = {
    torch.uint8: "*u8", torch.int8: "*i8", torch.int16: "*i16", torch.int32: "*i32",
    torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
}  # fmt: skip
DIVISIBLE = ("N", "K", "UNITS_PER_SPLIT", "rs0", "rs1", "rs2", "rs3")


def compile_matvec(fmt: str, M: int, cfg: _common.MatvecConfig, even: bool, arch: int):
    spec = KERNELS[fmt]
    planes = spec.plane_views(FORMATS[fmt].quantize(torch.randn(2, 256)))
    planes = list(planes) + [planes[0]] * (4 - len(planes))
    types = {"xq_ptr": "*i32", "xd_ptr": "*fp32", "xs32_ptr": "*fp32", "xs16_ptr": "*fp32", "bias_ptr": "*bf16"}
    types.update({f"p{i}": TRITON_TYPES[p.dtype] for i, p in enumerate(planes)}, out_ptr="*bf16")
    block_m = matvec_block_m(M)
    constants = dict(
        LOAD=spec.load_units, DECODE=spec.decode, ROW_DOT=spec.row_dot, UNIT=spec.unit, GROUP=spec.group,
        HAS_BIAS=False, SPLIT=False, PREFETCH=cfg.prefetch, BLOCK_M=block_m, M_BLOCKS=triton.cdiv(M, block_m),
        BLOCK_N=cfg.block_n, BLOCK_U=cfg.block_u, USE_ASM=True, GLU=0, EVEN=even, L2_UNITS=0,
    )  # fmt: skip
    fn = _common.matvec_kernel
    signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in types or a in DIVISIBLE}
    src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    )


def nvidia_tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def loop_body(sass: str) -> list[str]:
    """The instructions between the first label that a later branch jumps back to and that branch."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    for i, line in enumerate(lines):
        m = re.search(r"BRA `?\(?(\.L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            return [x for x in lines[labels[m.group(1)] : i + 1] if re.match(r"^\s+/\*[0-9a-f]{4}\*/", x)]
    return []


def opcode(line: str) -> str:
    m = re.match(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
    return m.group(1) if m else "?"


def disassemble(cubin: Path) -> str:
    """The cubin's SASS, as Triton's own nvdisasm prints it."""
    return subprocess.run(
        [nvidia_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True, check=True
    ).stdout


def inspect_kernel(k, stem: str, dump=None) -> dict:
    """A compiled Triton kernel `k` -> {"registers", "stack", "loop": its K loop's SASS lines, "mix":
    Counter of their opcodes}; dump: a folder for the cubin, ttgir, ptx and sass (named `stem`.*)."""
    folder = Path(dump) if dump else Path(tempfile.mkdtemp(prefix="sass_"))
    folder.mkdir(parents=True, exist_ok=True)
    cubin = folder / f"{stem}.cubin"
    cubin.write_bytes(k.asm["cubin"])
    sass = disassemble(cubin)
    usage = subprocess.run(
        [nvidia_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    if dump:
        for kind in ("ttgir", "ptx"):
            (folder / f"{stem}.{kind}").write_text(k.asm[kind])
        (folder / f"{stem}.sass").write_text(sass)
    else:
        shutil.rmtree(folder)
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    body = loop_body(sass)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "stack": int(stack.group(1)) if stack else None,
        "loop": body,
        "mix": collections.Counter(opcode(x) for x in body),
    }


def inspect_matvec(fmt: str, M: int, cfg: _common.MatvecConfig, even: bool = True, arch: int = 90, dump=None) -> dict:
    """`inspect_kernel` of the format's matvec, plus "conversions": SHFL + BAR in the loop."""
    r = inspect_kernel(compile_matvec(fmt, M, cfg, even, arch), f"matvec_{fmt}", dump)
    return {**r, "conversions": r["mix"]["SHFL"] + r["mix"]["BAR"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fmt", choices=sorted(KERNELS))
    ap.add_argument("--m", type=int, default=1, help="rows of x (sets BLOCK_M as the launcher does)")
    ap.add_argument("--N", type=int, default=28672, help="for the default config")
    ap.add_argument("--K", type=int, default=4096, help="for the default config")
    ap.add_argument("--block-n", type=int)
    ap.add_argument("--block-u", type=int)
    ap.add_argument("--num-warps", type=int)
    ap.add_argument("--prefetch", action=argparse.BooleanOptionalAction)
    ap.add_argument("--no-even", action="store_true", help="the masked K loop (K // unit not a multiple of block_u)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    ap.add_argument("--dump", help="folder for the cubin, ttgir, ptx and sass")
    ap.add_argument("--json", action="store_true", help="print one JSON line: the loop with and without masks")
    args = ap.parse_args()
    cfg = KERNELS[args.fmt].matvec_config(args.m, args.N, args.K)
    cfg = _common.MatvecConfig(
        block_n=args.block_n or cfg.block_n,
        block_u=args.block_u or cfg.block_u,
        num_warps=args.num_warps or cfg.num_warps,
        prefetch=cfg.prefetch if args.prefetch is None else args.prefetch,
    )
    if args.json:  # tests/kernels/test_sass.py (a process of its own: the tests run Triton's interpreter)
        both = {
            name: inspect_matvec(args.fmt, args.m, cfg, even, args.arch)
            for name, even in (("even", True), ("masked", False))
        }
        print(json.dumps({name: dict(r, loop=len(r["loop"])) for name, r in both.items()}))
        return
    r = inspect_matvec(args.fmt, args.m, cfg, not args.no_even, args.arch, args.dump)
    print(f"{args.fmt} M={args.m} {cfg} even={not args.no_even} sm_{args.arch}, triton {triton.__version__}")
    print(f"registers {r['registers']}, stack {r['stack']} bytes")
    print(f"K loop: {len(r['loop'])} instructions per thread and step ({cfg.block_n * cfg.block_u} units per program)")
    print("  " + ", ".join(f"{op} {n}" for op, n in r["mix"].most_common()))
    print(f"  layout conversions in the loop (SHFL, BAR): {r['conversions']}")


if __name__ == "__main__":
    main()
