"""Kernel tests run their Triton kernels on the CPU under TRITON_INTERPRET=1 (set by tests/conftest.py
before any kernel module is imported), unless INDUCTOR_FUSE_GPU_TESTS=1 asks for the real GPU kernels
(then only the `gpu`-marked tests run their kernels; the interpreter tests skip)."""
