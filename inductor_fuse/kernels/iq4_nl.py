"""IQ4_NL kernels: W4A8 decode matvec (IQ4_XS's grid lookup and signed dp4a) and the weight tile
dequantizer used by the GEMM.

Planes (docs/design.md contract; quant/iq4_nl.py), weight [N, K], K % 32 == 0, block b of 32:
    qs uint8 [N, K/2]    16 bytes per block in IQ4_XS's kernel order: int32 word t (bytes 16b + 4t ..)
                         holds codes 4t..4t+3 in nibbles 0-3 and codes 16+4t..16+4t+3 in nibbles 4-7
    d  f16   [N, K/32]
    w[n, 32b + i] = d[b] * KVALUES[code i]   (IQ4_XS's grid)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, prefetch_when_batched, register_kernels, unit_scalars, unit_words, x_group, x_scales
from .iq4_xs import grid_dot, grid_tables, iq4nl_lookup, iq4nl_tile_values

UNIT = tl.constexpr(32)  # weights per matvec unit

# ---------------------------------------------------------------------------------------------
# Matvec. A unit is one block: its 16 qs bytes (4 int32 words, one 16-byte load) give IQ4_XS's
# A, B words by the byte-permute lookup (iq4nl_lookup), which meet the block's x group in
# grid_dot; no offset, so no xs32 term:
#   out[m, n] += d * xd * grid_dot
# ---------------------------------------------------------------------------------------------


@triton.jit
def _iq4nl_load_units(wctx, u, umask):
    # -> w int32 [BN, BU, 4] (the units' 16 bytes); d f16 [BN, BU]; z int32 [BN, 1, 1] zeros
    qs_ptr, d_ptr, _, _, qs_row, d_row, _, _, rows_c, _ = wctx
    z = (rows_c >> 31)[:, None, None]  # zeros (rows_c >= 0), opaque to ptxas: see iq4_xs.py
    return unit_words(qs_ptr, qs_row, u * 4, 4, umask), unit_scalars(d_ptr, d_row, u, umask), z


@triton.jit
def _iq4nl_decode(w, u, USE_ASM: tl.constexpr):
    qs, d, z = w
    ta0, ta1, tb0, tb1 = grid_tables(z, qs)
    return iq4nl_lookup(qs, ta0, ta1, tb0, tb1, USE_ASM), d.to(tl.float32)


@triton.jit
def _iq4nl_row_dot(wd, u, umask, xa, m, K, USE_ASM: tl.constexpr):
    g, d = wd
    xq_ptr, xd_ptr, xs32_ptr, xs16_ptr = xa
    s = grid_dot(g, x_group(xq_ptr, m, K, u * 8, umask, g[0]), USE_ASM)
    return d * (x_scales(xd_ptr, m, K // 32, u, umask)[None, :] * s.to(tl.float32))


@triton.jit
def _iq4nl_dequant_tile(p, rows, rows64, s, K, GROUP: tl.constexpr):
    v = iq4nl_tile_values(p[0], rows64, s, K)
    d = tl.load(p[1] + rows[:, None] * (K // 32) + s[None, :]).to(tl.float32)
    return d[:, :, None] * v.to(tl.float32)  # [BN, BK // 32, 32]


# The matvec default: Q4_0's (same bytes per block), not measured for IQ4_NL.
(SPEC,) = register_kernels(
    KernelSpec("iq4_nl", UNIT.value, _iq4nl_load_units, _iq4nl_decode, _iq4nl_row_dot, _iq4nl_dequant_tile,
               plane_dtypes=(torch.int32, None), default_config=prefetch_when_batched(2, 32, num_warps=1))
)  # fmt: skip
