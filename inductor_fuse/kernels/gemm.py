"""Quantized GEMM for prefill (large M): each program dequantizes a [BLOCK_N, BLOCK_K] weight tile
in registers (the format's `_*_dequant_tile`) and feeds it to `tl.dot` with the activation tile,
accumulating in float32. No int8 activation here: x stays in its own dtype (bf16/fp16 dots; fp32
x runs tf32 dots).

    out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]),  w = dequant(planes) tile by tile
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import GemmConfig, interpreting, pick_config
from .int4 import _int4_dequant_tile
from .q4_k import _q4k_dequant_tile
from .q5_0 import _q5_0_dequant_tile
from .q6_k import _q6k_dequant_tile
from .q8_0 import _q8_0_dequant_tile

FMT_IDS = {"q4_k": 0, "q6_k": 1, "q5_0": 2, "q8_0": 3, "int4_g32": 4, "int4_g64": 4, "int4_g128": 4}
FMT_GROUP = {"int4_g32": 32, "int4_g64": 64, "int4_g128": 128}


@triton.jit
def _qgemm_kernel(
    x_ptr, p0, p1, p2, p3, bias_ptr, out_ptr,  # x [M, K]; planes as stored (uint8 / int8 / f16); out [M, N]
    M, N, K,
    FMT: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
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
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + rm[:, None] * K + (k0 + offs_k)[None, :])  # [BM, BK]
        if FMT == 0:
            w = _q4k_dequant_tile(p0, p1, p2, rn, k0, K, BLOCK_N, BLOCK_K)
        elif FMT == 1:
            w = _q6k_dequant_tile(p0, p1, p2, p3, rn, k0, K, BLOCK_N, BLOCK_K)
        elif FMT == 2:
            w = _q5_0_dequant_tile(p0, p1, p2, p3, rn, k0, K, BLOCK_N, BLOCK_K)
        elif FMT == 3:
            w = _q8_0_dequant_tile(p0, p1, p2, p3, rn, k0, K, BLOCK_N, BLOCK_K)
        else:
            w = _int4_dequant_tile(p0, p1, p2, p3, rn, k0, K, GROUP, BLOCK_N, BLOCK_K)
        if DOT_F32:  # the interpreter's bf16 dot is wrong (triton 3.6/3.9): do it in float32 there
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
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


def launch_gemm(x: torch.Tensor, planes, bias, fmt: str, cfg: GemmConfig, out: torch.Tensor) -> torch.Tensor:
    M, K = x.shape
    N = planes[0].shape[0]
    ps = list(planes) + [planes[0]] * (4 - len(planes))
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _qgemm_kernel[grid](
        x, ps[0], ps[1], ps[2], ps[3], bias if bias is not None else out, out, M, N, K,
        FMT=FMT_IDS[fmt], GROUP=FMT_GROUP.get(fmt, 32), HAS_BIAS=bias is not None,
        DOT_F32=interpreting(), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def qgemm(x: torch.Tensor, planes, bias, fmt: str, config: GemmConfig | None = None) -> torch.Tensor:
    """x [M, K] float (contiguous) -> [M, N] in x.dtype."""
    M, K = x.shape
    N = planes[0].shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if config is None:
        cands = gemm_configs(M, K)
        key = ("gemm", fmt, _bucket(M), N, K, x.dtype)
        config = pick_config(key, cands, lambda c: launch_gemm(x, planes, bias, fmt, c, out))
    return launch_gemm(x, planes, bias, fmt, config, out)


def _bucket(M: int) -> int:
    return min(triton.next_power_of_2(M), 4096)
