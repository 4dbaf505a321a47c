"""torch.ops.inductor_fuse.sliced_linear: x @ w^T as one batched mm over slices of w's rows -- the
few-row products of decoding on CPU over a large weight.

    sliced_linear(Tensor x, Tensor w, int slices) -> Tensor
    x: [M, K] float; w: [N, K] x's dtype, same device; N % slices == 0
    returns x @ w^T, [M, N] in x's dtype, computed as bmm(x, w.view(slices, N / slices, K)^T)

torch's CPU GEMM (MKL) runs a product with a few rows of x on one thread: Gemma-3's output head, x
[1, 640] times its float32 [262144, 640] weight, took 44 ms on a 2-core machine that reads the weight
in 14 ms. The batched mm runs its batch on every intra-op thread: 23 ms with 8 slices. Each output is
the same dot product over K as in the one mm, equal to ``x @ w.t()`` up to float32 rounding: MKL
may order a row's sum differently in the batched call (5e-7 of the largest output with 2 threads
and 4 rows of x on a 2-core Xeon; bit-identical on one thread; slices of a multiple of 64 rows
differ less often than odd ones: tests/test_sliced_linear.py). The ``dequant_cpu`` rule emits it
(patterns/dequant_cpu.py: which weights, how many slices). An op rather than aten.bmm in the
graph: Inductor lowers a CPU bmm whose x has one row to a multiply and a sum, not MKL's product.

The op runs on every device as written (pure torch); fake: shape and dtype, same validation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_sliced_linear_args(x: Tensor, w: Tensor, slices: int) -> None:
    """Raises ValueError naming the problem."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"sliced_linear: x [M, K] and w [N, K], got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != w.dtype or x.device != w.device:
        raise ValueError(f"sliced_linear: x and w differ: {x.dtype} on {x.device}, {w.dtype} on {w.device}")
    if slices < 1 or w.shape[0] % slices:
        raise ValueError(f"sliced_linear: {slices} slices of {w.shape[0]} rows: not a positive divisor")


@torch.library.custom_op("inductor_fuse::sliced_linear", mutates_args=())
def sliced_linear(x: Tensor, w: Tensor, slices: int) -> Tensor:
    check_sliced_linear_args(x, w, slices)
    (M, K), N = x.shape, w.shape[0]
    y = torch.bmm(x.expand(slices, M, K), w.view(slices, N // slices, K).transpose(1, 2))  # [slices, M, N / slices]
    return y.transpose(0, 1).reshape(M, N)


@sliced_linear.register_fake
def _sliced_linear_fake(x: Tensor, w: Tensor, slices: int) -> Tensor:
    check_sliced_linear_args(x, w, slices)
    return x.new_empty(x.shape[0], w.shape[0])
