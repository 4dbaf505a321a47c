"""The CUDA implementation of torch.ops.inductor_fuse.glu_linear (the op: inductor_fuse/glu.py): a
gated MLP's gate|up linear over float weights with act(gate) * up in the epilogue.

    M <= FUSED_MAX_M rows of x (decode, a small batch, a speculative draft): `_glu_linear_kernel`,
        grid (cdiv(I, BLOCK_N),); program n reads the 2 BLOCK_N interleaved weight rows of outputs
        n BLOCK_N .. + BLOCK_N - 1 (one contiguous [2 BLOCK_N, K] slab: gate and up of an output
        are neighbours) once, in BLOCK_K steps, and all M rows of x (padded to 16 for tl.dot):
            acc [16, 2 BLOCK_N] += x_tile @ w_tile^T            (float32)
        then splits acc into its even (gate) and odd (up) columns, adds the bias, and writes only
        act(gate) * up [M, BLOCK_N]. One launch, no [M, 2I] intermediate.
    more rows (prefill): cuBLAS's mm over the interleaved weight, then `_common.act_mul` (one
        launch: each output reads its gate and up as one pair of neighbours). A tl.dot GEMM does
        not keep up with cuBLAS there, and the product's [M, 2I] round trip is small next to the
        GEMM.

float32 operands use tl.dot's "ieee" precision (no TF32 rounding): the op's float32 contract. On a
device without CUDA, or when the kernel cannot take the call, the pure-torch reference runs and a
WARNING says so once (_common.kernel_or_reference). Registration happens at import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..glu import check_glu_linear_args, glu_linear, glu_linear_reference
from ._common import act_mul, glu, glu_code, interpreting, kernel_or_reference, loop_bound, num_sms

FUSED_MAX_M = 16  # rows of x the fused kernel takes (one 16-row tl.dot tile); more: mm + act_mul


@triton.jit
def _glu_linear_kernel(
    x_ptr,  # [M, K], row stride sxm, unit column stride
    w_ptr,  # [2I, K] contiguous, gate / up rows interleaved
    b_ptr,  # [2I] or a dummy (HAS_BIAS)
    out_ptr,  # [M, I] contiguous
    M,
    I,
    K,
    sxm,
    HAS_BIAS: tl.constexpr,
    GLU: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" for float32 operands (no TF32 rounding)
    DOT_F32: tl.constexpr,  # the interpreter's bf16 dot is wrong (triton 3.6/3.9): float32 dots there
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    m = tl.arange(0, BLOCK_M)
    c = tl.arange(0, 2 * BLOCK_N)  # interleaved columns: output n0 + c // 2, gate if c even
    wrow = 2 * pid * BLOCK_N + c  # weight rows
    wok = wrow < 2 * I
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], dtype=tl.float32)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * sxm
    w_rows = w_ptr + wrow.to(tl.int64)[:, None] * K
    for k0 in range(0, loop_bound(K), BLOCK_K):
        kk = k0 + k
        xt = tl.load(x_rows + kk[None, :], mask=(m < M)[:, None] & (kk < K)[None, :], other=0.0)
        wt = tl.load(w_rows + kk[None, :], mask=wok[:, None] & (kk < K)[None, :], other=0.0)
        if DOT_F32:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + wrow, mask=wok, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N, 2]))
    y = glu(gate, up, GLU)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(
        out_ptr + m.to(tl.int64)[:, None] * I + n[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=(m < M)[:, None] & (n < I)[None, :],
    )


def plan(I: int, K: int, elt_bytes: int, n_sms: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) of the fused kernel: outputs per program as many
    as keep at least one program per SM (64 .. 16), K steps of 256 bytes of weight row."""
    block_n = 64
    while block_n > 16 and triton.cdiv(I, block_n) < n_sms:
        block_n //= 2
    block_k = min(256 // elt_bytes, max(triton.next_power_of_2(K), 16))
    return block_n, block_k, 4, 3


def glu_linear_cuda(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    """The launcher (arguments already validated; CPU tensors under TRITON_INTERPRET=1)."""
    if not (x.is_cuda or interpreting()):
        raise ValueError(f"glu_linear kernel: needs CUDA tensors (or TRITON_INTERPRET=1), got {x.device}")
    K = x.shape[-1]
    I = weight.shape[0] // 2
    x2 = x.reshape(-1, K)
    if x2.numel() and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    weight = weight.contiguous()
    out = torch.empty((M, I), dtype=x.dtype, device=x.device)
    if M == 0 or I == 0:
        return out.reshape(*x.shape[:-1], I)
    if M > FUSED_MAX_M:
        act_mul(torch.nn.functional.linear(x2, weight, bias), act, out)
        return out.reshape(*x.shape[:-1], I)
    block_n, block_k, warps, stages = plan(I, K, x.element_size(), num_sms(x.device))
    _glu_linear_kernel[(triton.cdiv(I, block_n),)](
        x2,
        weight,
        bias if bias is not None else weight,
        out,
        M,
        I,
        K,
        x2.stride(0),
        HAS_BIAS=bias is not None,
        GLU=glu_code(act),
        PRECISION="ieee" if x.dtype == torch.float32 or interpreting() else "tf32",  # tf32: unused for 16-bit
        DOT_F32=interpreting(),
        BLOCK_M=FUSED_MAX_M,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
        num_stages=stages,
    )
    return out.reshape(*x.shape[:-1], I)


@glu_linear.register_kernel("cuda")
def _glu_linear_cuda(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> Tensor:
    args = (x, weight, bias, act)
    check_glu_linear_args(*args)
    return kernel_or_reference("glu_linear", glu_linear_cuda, glu_linear_reference, *args)
