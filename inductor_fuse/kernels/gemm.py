"""Large-M (prefill) paths. No int8 activation here: x stays in its own dtype.

1. `qgemm`: fused GEMM. Each program dequantizes a [BLOCK_N, BLOCK_K] weight tile in registers
   (the format's `KernelSpec.dequant_tile`, passed to the kernels as a constexpr) and feeds it to
   `tl.dot` with the activation tile (float32 accumulate; bf16/fp16 dots, full fp32 for fp32 x).
       out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]),  w = dequant(planes) tile by tile
2. `dequant_mm`: dequantize a chunk of rows into a reusable x.dtype scratch (`_dequant_kernel`,
   one pass over the quantized bytes), then cuBLAS writes out[:, chunk] directly (ldc = N).
   A chunk is at least ~32 MB (so small weights stay in the 50 MB L2 between the two steps) and
   at least enough rows for ~2 waves of 128x128 cuBLAS tiles (narrow chunks starve the GEMM).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import GemmConfig, interpreting, loop_bound, num_sms, pick_config
from .registry import KernelSpec, kernel_spec


@triton.jit
def _dequant_kernel(
    p0,
    p1,
    p2,
    p3,
    out_ptr,  # planes; out [n1 - n0, K] (x.dtype): rows n0.. of the weight
    N,
    K,
    n0,
    n1,
    DEQUANT_TILE: tl.constexpr,  # the format's KernelSpec.dequant_tile
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = n0 + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_c = tl.minimum(rows, n1 - 1)
    k0 = tl.program_id(1) * BLOCK_K
    w = DEQUANT_TILE((p0, p1, p2, p3), rows_c, rows_c.to(tl.int64), k0 // 32 + tl.arange(0, BLOCK_K // 32), K, GROUP)
    s = tl.arange(0, BLOCK_K // 32)
    i = tl.arange(0, 32)
    offs = ((rows - n0).to(tl.int64) * K)[:, None, None] + (k0 + s * 32)[None, :, None] + i[None, None, :]
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=(rows < n1)[:, None, None])


@triton.jit
def _qgemm_kernel(
    x_ptr,
    p0,
    p1,
    p2,
    p3,
    bias_ptr,
    out_ptr,  # x [M, K]; planes as stored (uint8 / int8 / f16); out [M, N]
    M,
    N,
    K,
    DEQUANT_TILE: tl.constexpr,  # the format's KernelSpec.dequant_tile
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row-tiles share each weight tile while it is in L2
    width = GROUP_M * num_pid_n
    group_id = pid // width
    first_m = group_id * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % gsize
    pid_n = (pid % width) // gsize
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.minimum(offs_m, M - 1).to(tl.int64)
    rn = tl.minimum(offs_n, N - 1)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, loop_bound(K), BLOCK_K):
        x = tl.load(x_ptr + rm[:, None] * K + (k0 + offs_k)[None, :])  # [BM, BK]
        s = k0 // 32 + tl.arange(0, BLOCK_K // 32)  # the tile's 32-blocks
        w = tl.reshape(DEQUANT_TILE((p0, p1, p2, p3), rn, rn.to(tl.int64), s, K, GROUP), (BLOCK_N, BLOCK_K))
        if DOT_F32:  # the interpreter's bf16 dot is wrong (triton 3.6/3.9): do it in float32 there
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
        elif x.dtype == tl.float32:  # full fp32 products, not tf32 (10-bit mantissa: ~1e-3 relative error)
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm_configs(M: int, K: int) -> list[GemmConfig]:
    bk = 64 if K % 64 == 0 else 32
    if interpreting():
        return [GemmConfig(16, 16, bk, num_warps=4, num_stages=1)]
    if M <= 16:
        return [GemmConfig(16, 64, bk, 4, 4), GemmConfig(16, 128, bk, 4, 4), GemmConfig(16, 32, bk, 4, 4)]
    if M <= 64:
        return [GemmConfig(64, 64, bk, 4, 4), GemmConfig(32, 128, bk, 4, 4), GemmConfig(64, 128, bk, 8, 3)]
    return [
        GemmConfig(128, 128, bk, 8, 3),
        GemmConfig(128, 64, bk, 4, 4),
        GemmConfig(64, 128, bk, 4, 4),
        GemmConfig(128, 256, bk, 8, 3),
        GemmConfig(256, 128, bk, 8, 3),
    ]


def launch_gemm(x: torch.Tensor, planes, bias, spec: KernelSpec, cfg: GemmConfig, out: torch.Tensor) -> torch.Tensor:
    M, K = x.shape
    N = planes[0].shape[0]
    ps = list(planes) + [planes[0]] * (4 - len(planes))
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _qgemm_kernel[grid](
        x,
        ps[0],
        ps[1],
        ps[2],
        ps[3],
        bias if bias is not None else out,
        out,
        M,
        N,
        K,
        DEQUANT_TILE=spec.dequant_tile,
        GROUP=spec.group,
        HAS_BIAS=bias is not None,
        DOT_F32=interpreting(),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def qgemm(x: torch.Tensor, planes, bias, fmt: str, config: GemmConfig | None = None) -> torch.Tensor:
    """x [M, K] float (contiguous) -> [M, N] in x.dtype."""
    spec = kernel_spec(fmt)
    M, K = x.shape
    N = planes[0].shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if config is None:
        cands = gemm_configs(M, K)
        key = ("gemm", fmt, _bucket(M), N, K, x.dtype)
        config = pick_config(key, cands, lambda c: launch_gemm(x, planes, bias, spec, c, out))
    return launch_gemm(x, planes, bias, spec, config, out)


def dequantize_rows(planes, fmt: str, n0: int, n1: int, out: torch.Tensor) -> torch.Tensor:
    """Weight rows [n0, n1) dequantized into out [n1 - n0, K] (any float dtype)."""
    spec = kernel_spec(fmt)
    N = planes[0].shape[0]
    K = out.shape[1]
    ps = list(planes) + [planes[0]] * (4 - len(planes))
    BLOCK_N, BLOCK_K = (16, 64) if interpreting() else (32, 256)
    if K % BLOCK_K:  # the grid covers K // BLOCK_K tiles: a tile must divide K (every K is a multiple of 32)
        BLOCK_K = 32
    grid = (triton.cdiv(n1 - n0, BLOCK_N), K // BLOCK_K)
    _dequant_kernel[grid](
        ps[0],
        ps[1],
        ps[2],
        ps[3],
        out,
        N,
        K,
        n0,
        n1,
        DEQUANT_TILE=spec.dequant_tile,
        GROUP=spec.group,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        num_warps=4,
    )
    return out


DEQUANT_CHUNK_BYTES = 32 << 20


def dequant_mm(x: torch.Tensor, planes, bias, fmt: str) -> torch.Tensor:
    """x [M, K] -> [M, N]: dequantize ~32 MB row chunks into one reusable scratch, cuBLAS each."""
    M, K = x.shape
    N = planes[0].shape[0]
    rows = max(256, (DEQUANT_CHUNK_BYTES // (K * x.element_size())) // 256 * 256)
    rows = max(rows, triton.cdiv(2 * num_sms(x.device) * 128, triton.cdiv(M, 128)))  # >= 2 waves of 128x128 tiles
    if rows >= N:
        w = dequantize_rows(planes, fmt, 0, N, torch.empty((N, K), dtype=x.dtype, device=x.device))
        return torch.nn.functional.linear(x, w, bias)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    scratch = torch.empty((rows, K), dtype=x.dtype, device=x.device)
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        w = dequantize_rows(planes, fmt, n0, n1, scratch[: n1 - n0])
        if bias is not None:
            torch.addmm(bias[n0:n1], x, w.t(), out=out[:, n0:n1])
        else:
            torch.mm(x, w.t(), out=out[:, n0:n1])
    return out


def _bucket(M: int) -> int:
    return min(triton.next_power_of_2(M), 4096)
