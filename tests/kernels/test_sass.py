"""The W4A8 matvec compiled for sm_90 on this machine (benchmarks/sass_matvec.py: Triton's own
ptxas and nvdisasm, no GPU, in a process of its own since these tests run Triton's interpreter):
what its K loop executes, for the formats whose loop was made lean on purpose; and w4a16_sync
(benchmarks/sass_mma.py, through its own launcher), whose operands must reach its MMAs without a
layout conversion. Structure, not speed: speed is measured by the benchmarks on the GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sass_matvec.py"
sys.path.insert(0, str(SCRIPT.parent))
import sass_matvec  # noqa: E402 -- importing it compiles nothing

pytestmark = pytest.mark.skipif(
    not os.path.exists(sass_matvec.nvidia_tool("nvdisasm")), reason="this Triton wheel has no NVIDIA tools"
)

# (fmt, M, K): 8B decode shapes whose loops docs/kernels.md reports (gate_up / lm_head K = 4096, down 14336)
CASES = [("iq4_xs", 1, 4096), ("q4_k", 1, 4096), ("q6_k", 1, 4096), ("q6_k", 16, 14336)]


def run_json(script: Path, *args: str) -> dict:
    """The script's --json line, from a process without TRITON_INTERPRET (it compiles for sm_90)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run(
        [sys.executable, str(script), *args, "--json"], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt, M, K", CASES)
def test_scales_load_in_the_weights_layout_and_whole_steps_drop_the_masks(fmt, M, K):
    r = run_json(SCRIPT, fmt, "--m", str(M), "--K", str(K))
    even, masked = r["even"], r["masked"]
    assert even["loop"] and masked["loop"], "no K loop found in the SASS"
    # no layout conversion inside the loop: the scale loads are declared non-contiguous so that
    # Triton gives them the weights' layout (else a warp shuffle, or shared memory and barriers,
    # every step)
    assert even["conversions"] == 0, even["mix"]
    # the unmasked loop: no zero-fill of masked-off load destinations, fewer instructions
    assert even["mix"].get("CS2R", 0) == 0 < masked["mix"].get("CS2R", 0)
    assert even["loop"] < masked["loop"]
    assert even["stack"] == 0, f"{fmt}: spills to the stack"


@pytest.mark.parametrize("args, mma", [([], "IGMMA"), (["--block-n", "32", "--num-warps", "1"], "IMMA")])
def test_int8_mma_loop_issues_its_dots_on_the_tensor_cores(args, mma):
    # benchmarks/sass_mma.py finds the Q4_K kernel's K loop, and each unit's two int8 dots are
    # tensor-core instructions in it (wgmma for a 4-warp program, mma.sync for a 1-warp one)
    r = run_json(SCRIPT.parent / "sass_mma.py", *args)
    assert r["loop"] > 0, "no K loop found in the SASS"
    assert r["mix"].get(mma, 0) >= 2, r["mix"]


def test_w4a16_mma_loop_decodes_packed_bytes_into_the_mma_operands():
    # w4a16_mma's default K step (2 units): bf16 wgmma with the decoded weights as register
    # operands; the K order of the tile gives each thread 8 contiguous bytes (a few wide shared
    # loads, not one per byte) and decoded pairs that are operand registers as they come (no
    # repacking). With the natural K order, 4 warps and one unit a step, the loop had 47 LDS and
    # 73 PRMT; here 11 / 24 (triton 3.6), 19 / 25 (3.9), 16 of the PRMT the decode's own. Fewer
    # instructions per weight than int8_mma's loop
    r = run_json(SCRIPT.parent / "sass_mma.py", "--kernel", "w4a16_mma")
    mix = r["mix"]
    assert mix.get("HGMMA", 0) >= 8 and mix.get("IGMMA", 0) == 0, mix
    assert mix.get("LDS", 0) <= 24 and mix.get("PRMT", 0) <= 32, mix
    assert r["stack"] == 0
    assert r["issue_us"] < run_json(SCRIPT.parent / "sass_mma.py")["issue_us"]


MMA_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sass_mma.py"


SYNC_CASES = [("q4_k", 8, 1), ("q4_k", 16, 1), ("q6_k", 8, 1), ("q6_k", 16, 1), ("q4_k", 16, 2), ("q6_k", 8, 2)]


@pytest.mark.parametrize("xstages", [0, 3])
@pytest.mark.parametrize("fmt, M, prefetch", SYNC_CASES)
def test_w4a16_sync_operands_reach_the_mma_without_moving(fmt, M, prefetch, xstages):
    # compiled through its launcher (sass_mma.py --kernel w4a16_sync). The decoded words and x's
    # tile become MMA operands where they are: no shuffle, nothing spilled; one 16-row tile of 256
    # weights a warp and block: 16 MMAs per 8 rows of x
    r = run_json(
        MMA_SCRIPT, "--kernel", "w4a16_sync", "--fmt", fmt, "--m", str(M), "--split", "2",
        "--prefetch", str(prefetch), "--xstages", str(xstages),
    )  # fmt: skip
    mix = r["mix"]
    assert r["loop"] and r["stack"] == 0
    assert all(mix.get(op, 0) == 0 for op in ("SHFL", "STS", "LDL", "STL")), mix
    assert mix["HMMA"] == 16 * (M // 8), mix
    # whole words of the weights: per lane and block two rows' (Q4_K 2 x 2 16-byte loads + 2 scale
    # words + 2 (d, dmin); Q6_K 2 x 3 + 2 x 2 scale words + 2 d)
    weights = {"q4_k": 8, "q6_k": 12}[fmt]
    if xstages == 0:  # and 8 16-byte loads of x per 8 rows of x; no shared memory, no barrier
        assert mix["LDG"] == weights + 8 * (M // 8), mix
        assert all(mix.get(op, 0) == 0 for op in ("BAR", "LDS", "LDGSTS")), mix
    else:  # x through the ring: a thread's share of the next tile copied (4 warps: 2 x 16 bytes per
        # 8 rows of x), its own row read back (8 x 16 bytes per 8 rows), one wait and two barriers
        assert mix["LDG"] == weights, mix
        assert mix["LDGSTS"] == 2 * (M // 8) and mix["BAR"] == 2 and mix["DEPBAR"] == 1, mix
        assert r["lds128"] == 8 * (M // 8), mix
    if fmt == "q4_k":  # 2 per word, in the asm: no bytes repacked (with x's ring, triton 3.9: one more)
        assert mix["PRMT"] == 32 or (xstages and mix["PRMT"] == 33), mix


def test_pdl_kernels_read_nothing_before_their_wait():
    # A programmatic dependent launch may start while the kernel before it still runs: before its
    # griddepcontrol.wait (ACQBULK) a kernel must not read what another kernel writes. The small
    # kernels load nothing there; the matvec only its first weights (constants); launch_dependents
    # (PREEXIT) comes after the wait (docs/kernels.md "PDL")
    r = run_json(SCRIPT.parent / "sass_pdl.py")
    # norm, act_quant, rope, split, merge, the matvec with and without register prefetch, and without L2 prefetch
    assert len(r) == 8, sorted(r)
    for name, s in r.items():
        assert s["waits"] == 1 and s["loads_after_wait"] > 0, (name, s)
        if name.endswith("matvec_kernel"):
            assert s["loads_before_wait"] > 0, (name, s)
        else:
            assert s["loads_before_wait"] == 0, (name, s)
        # config.settings.l2_prefetch (on by default where the matvec triggers early, as here): the
        # matvec asks L2 for its next weights before the wait (CCTL.E.PF2); nothing else does
        with_l2 = name.endswith("matvec_kernel") and "l2_prefetch 0" not in name
        assert (s["l2_prefetches_before_wait"] > 0) == with_l2, (name, s)
        assert s["trigger_after_wait"] is not False, (name, s)
    triggering = sorted(name.split(": ")[1] for name, s in r.items() if s["triggers"])
    # config.settings.pdl_early (the default): the matvec, the rope and the split kernel trigger too
    assert triggering == [
        "_act_quant_kernel", "_merge_kernel", "_rmsnorm_quantize_kernel", "_rope_cache_kernel", "_split_kernel",
        "matvec_kernel", "matvec_kernel", "matvec_kernel",
    ], triggering  # fmt: skip
    # the split kernel's trigger comes after its loop: after every load of K, V and the mask
    split = r["decode_attention: _split_kernel"]
    assert split["loads_after_trigger"] == 0 and split["loads_after_wait"] >= 3, split
