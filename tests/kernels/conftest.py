"""Kernel tests run their Triton kernels on the CPU under TRITON_INTERPRET=1 (set here, before any
kernel module is imported), unless INDUCTOR_FUSE_GPU_TESTS=1 asks for the real GPU kernels
(then only the `gpu`-marked tests run their kernels; the interpreter tests skip)."""

import os
import sys

if os.environ.get("INDUCTOR_FUSE_GPU_TESTS", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    # kernel modules decorated before the variable was set would not be interpreted
    for name in [m for m in sys.modules if m.startswith("inductor_fuse.kernels.") and not m.endswith(".ops")]:
        del sys.modules[name]
