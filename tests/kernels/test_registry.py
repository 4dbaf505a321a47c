"""The kernel registry (kernels.registry.KERNELS, the mirror of quant.FORMATS) and the settings
(inductor_fuse.config) that steer dispatch and tuning. No kernel runs here."""

import pytest
import torch

from inductor_fuse import config
from inductor_fuse.kernels import _common, dispatch
from inductor_fuse.kernels._common import MatvecConfig, pick_config
from inductor_fuse.kernels.registry import KERNELS, kernel_spec
from inductor_fuse.kernels.testing import random_planes
from inductor_fuse.quant.formats import FORMATS


def test_every_spec_is_a_format():
    assert set(KERNELS) <= set(FORMATS), f"kernel specs of unknown formats: {sorted(set(KERNELS) - set(FORMATS))}"
    assert all(spec.fmt == fmt for fmt, spec in KERNELS.items())


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f in KERNELS])
def test_spec_agrees_with_its_format(fmt):
    spec, f = KERNELS[fmt], FORMATS[fmt]
    # every K the format accepts is a whole number of matvec units, each of whole 32-groups of x
    assert f.block_size % spec.unit == 0 and spec.unit % 32 == 0
    N, K = 3, f.block_size
    views = spec.plane_views(random_planes(fmt, N, K))
    assert len(views) == len(f.plane_specs) <= 4  # the kernels take up to 4 planes
    assert all(v.shape[0] == N for v in views)
    assert spec.matvec_configs and all(isinstance(c, MatvecConfig) for c in spec.matvec_configs)
    for M in range(1, spec.matvec_max_m + 1):
        assert isinstance(spec.matvec_config(M, 4096, 4096), MatvecConfig)
    assert spec.matvec_max_m >= 1
    assert spec.group == 0 or (spec.group % 32 == 0 and f.block_size % spec.group == 0)


def test_a_format_without_kernels_is_a_clear_error(monkeypatch):
    fmt = "q8_0"
    planes = random_planes(fmt, 8, 64)
    monkeypatch.delitem(KERNELS, fmt)
    with pytest.raises(NotImplementedError, match="no Triton kernels for weight format 'q8_0'"):
        kernel_spec(fmt)
    with pytest.raises(NotImplementedError, match="'q8_0'"):
        dispatch.qlinear_cuda(torch.randn(2, 64), planes, None, fmt)


def test_settings_from_env():
    assert config.from_env({}) == config.Settings()
    env = {
        "INDUCTOR_FUSE_EXACT_MATVEC": "1",
        "INDUCTOR_FUSE_GEMM": "fused",
        "INDUCTOR_FUSE_NO_TUNE": "1",
        "INDUCTOR_FUSE_TUNE": "0",
        "INDUCTOR_FUSE_SMALL_M": "sync",
    }
    assert config.from_env(env) == config.Settings(exact_matvec=True, gemm="fused", no_tune=True, small_m="sync")
    with pytest.raises(ValueError, match="INDUCTOR_FUSE_GEMM"):
        config.from_env({"INDUCTOR_FUSE_GEMM": "cublas"})
    with pytest.raises(ValueError, match="INDUCTOR_FUSE_SMALL_M"):
        config.from_env({"INDUCTOR_FUSE_SMALL_M": "mma"})
    assert config.from_env({}).l2_prefetch == config.L2_PREFETCH_UNITS == 8
    assert config.from_env({"INDUCTOR_FUSE_L2_PREFETCH": "0"}).l2_prefetch == 0
    assert config.from_env({"INDUCTOR_FUSE_L2_PREFETCH": "64"}).l2_prefetch == 64
    for bad in ("-1", "all"):
        with pytest.raises(ValueError, match="INDUCTOR_FUSE_L2_PREFETCH"):
            config.from_env({"INDUCTOR_FUSE_L2_PREFETCH": bad})


def test_pdl_is_on_by_default_and_only_for_cuda():
    from inductor_fuse.kernels._common import pdl, pdl_early, pdl_launch

    assert config.from_env({}).pdl and not config.from_env({"INDUCTOR_FUSE_PDL": "0"}).pdl
    assert config.from_env({"INDUCTOR_FUSE_PDL": "1"}).pdl
    assert config.from_env({}).pdl_early == "auto"
    assert config.from_env({"INDUCTOR_FUSE_PDL_EARLY": "auto"}).pdl_early == "auto"
    assert config.from_env({"INDUCTOR_FUSE_PDL_EARLY": "1"}).pdl_early is True
    assert config.from_env({"INDUCTOR_FUSE_PDL_EARLY": "0"}).pdl_early is False
    with pytest.raises(ValueError, match="INDUCTOR_FUSE_PDL_EARLY"):
        config.from_env({"INDUCTOR_FUSE_PDL_EARLY": "yes"})
    assert not pdl_early(torch.device("cpu"))
    assert not pdl(torch.device("cpu"))  # griddepcontrol is PTX for sm_90+: never on the CPU
    assert pdl_launch(torch.device("cpu")) == {}  # so no kernel is given Triton's launch_pdl there
    with config.patch(pdl=False):
        assert not pdl(torch.device("cuda"))  # (no device is touched when off)
        assert not pdl_early(torch.device("cuda"))  # (early only with pdl)
        assert pdl_launch(torch.device("cuda")) == {}


def test_pdl_early_auto_follows_the_graph_being_run():
    """ "auto": what the backend chose for the compiled graph being run (by the bytes of its linear
    weights), on outside one; "0" / "1" win over any graph's choice."""
    assert not config.pdl_early_for(config.PDL_EARLY_MIN_WEIGHT_BYTES - 1)
    assert config.pdl_early_for(config.PDL_EARLY_MIN_WEIGHT_BYTES)
    with config.patch(pdl_early="auto"):
        assert config.pdl_early_wanted()  # outside any compiled graph
        for chosen in (False, True):
            token = config.graph_pdl_early.set(chosen)
            try:
                assert config.pdl_early_wanted() is chosen
                with config.patch(pdl_early="1"):
                    assert config.pdl_early_wanted() is True
                with config.patch(pdl_early=False):
                    assert config.pdl_early_wanted() is False
            finally:
                config.graph_pdl_early.reset(token)
        assert config.pdl_early_wanted()


def test_patch_restores_the_settings():
    before = config.settings
    with pytest.raises(RuntimeError):
        with config.patch(tune=True) as s:
            assert config.settings is s and s.tune and not before.tune
            raise RuntimeError
    assert config.settings is before
    with pytest.raises(TypeError):
        with config.patch(no_such_knob=True):
            pass


def test_pick_config_follows_the_settings(monkeypatch):
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_TUNED", {})
    monkeypatch.setattr(_common.triton.testing, "do_bench", lambda fn, **kwargs: fn())
    seconds = {"default": 2.0, "faster": 1.0}
    cands = list(seconds)
    with config.patch(tune=False, no_tune=False):
        assert pick_config(("k", 1), cands, seconds.get) == "faster"  # the GEMM: tuned by default
        assert pick_config(("k", 2), cands, seconds.get, tune=False) == "default"  # the matvec: opt-in
    with config.patch(tune=True, no_tune=False):
        assert pick_config(("k", 3), cands, seconds.get, tune=False) == "faster"
    with config.patch(no_tune=True):
        assert pick_config(("k", 4), cands, seconds.get) == "default"
