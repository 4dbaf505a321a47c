"""benchmarks/synthetic_gguf.py: random-weight GGUF files of real Llama shapes in llama.cpp's
Q4_K_M (and Q4_K_S) type mix, the models of benchmarks/bench_decode.py."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import synthetic_gguf as sg  # noqa: E402

from inductor_fuse.gguf import load_gguf  # noqa: E402
from inductor_fuse.gguf.reader import read_gguf  # noqa: E402
from inductor_fuse.models.generate import decode_one_token, generate  # noqa: E402


@pytest.mark.parametrize("shape, llama_cpp_bytes", [("llama3-8b", 4.58 * 2**30), ("llama3-1b", 762.8 * 2**20)])
def test_sizes_are_llama_cpps(shape, llama_cpp_bytes):
    """llama.cpp's Q4_K_M files of these models: 4.58 GiB and 762.8 MiB (../shared/anchors.md)."""
    assert abs(sg.planned_bytes(sg.SHAPES[shape]) / llama_cpp_bytes - 1) < 0.01


def test_q4_k_m_type_mix():
    plan = {name: t.name for name, _, t in sg.tensor_plan(sg.SHAPES["llama3-8b"])}
    q6_layers = [i for i in range(32) if plan[f"blk.{i}.attn_v.weight"] == "Q6_K"]
    # the first and last eighth, and every third layer in between (llama.cpp's use_more_bits)
    assert q6_layers == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert all(plan[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in q6_layers else "Q4_K") for i in range(32))
    assert plan["output.weight"] == "Q6_K" and plan["token_embd.weight"] == "Q4_K"
    assert {plan[f"blk.7.{n}.weight"] for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} == {"Q4_K"}
    tied = {name: t.name for name, _, t in sg.tensor_plan(sg.SHAPES["llama3-1b"])}
    assert "output.weight" not in tied and tied["token_embd.weight"] == "Q6_K"  # the tied output gets Q6_K


def test_q4_k_s_type_mix():
    # llama.cpp's Q4_K_S: Q5_K for attn_v in the first 4 layers and ffn_down in the first eighth
    plan = {name: t.name for name, _, t in sg.tensor_plan(sg.SHAPES["llama3-8b"], "q4_k_s")}
    assert [i for i in range(32) if plan[f"blk.{i}.attn_v.weight"] == "Q5_K"] == [0, 1, 2, 3]
    assert [i for i in range(32) if plan[f"blk.{i}.ffn_down.weight"] == "Q5_K"] == [0, 1, 2, 3]
    assert {t for n, t in plan.items() if n.startswith("blk.")} == {"Q4_K", "Q5_K", "F32"}
    assert plan["output.weight"] == "Q6_K" and plan["token_embd.weight"] == "Q4_K"
    assert sg.planned_bytes(sg.SHAPES["llama3-8b"], "q4_k_s") < sg.planned_bytes(sg.SHAPES["llama3-8b"])
    with pytest.raises(ValueError, match="unknown mix 'q3_k_m'"):
        sg.tensor_plan(sg.SHAPES["tiny"], "q3_k_m")


@pytest.mark.parametrize("mix", ["q4_k_m", "q4_k_s"])
def test_a_written_file_loads_and_decodes(tmp_path, mix):
    path = str(tmp_path / "tiny.gguf")
    sg.write(path, sg.SHAPES["tiny"], mix=mix)
    f = read_gguf(path)
    data = sum(t.data.nbytes for t in f.tensors)
    assert data == sg.planned_bytes(sg.SHAPES["tiny"], mix) and os.path.getsize(path) > data
    assert [(t.name, t.tensor_type.name) for t in f.tensors] == [
        (name, t.name) for name, _, t in sg.tensor_plan(sg.SHAPES["tiny"], mix)
    ]
    if mix == "q4_k_s":  # its attn_v are Q5_K
        assert {t.tensor_type.name for t in f.tensors if "attn_v" in t.name} == {"Q5_K"}
    model, tok = load_gguf(path, device="cpu", max_seq_len=32, progress=False)
    eager = generate(model, [5, 6, 7], 6)
    step = torch.compile(decode_one_token, backend="inductor_fuse", fullgraph=True)
    assert generate(model, [5, 6, 7], 6, decode_fn=step) == eager
    assert tok.decode(tok.encode("hello ab")) == "hello ab"
