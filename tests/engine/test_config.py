"""EngineConfig validation: impossible values are refused with one line before anything starts."""

from __future__ import annotations

import pytest

from autotune.engine import EngineConfig
from autotune.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"producers": 0}, "producers must be >= 1"),
        ({"cpu_batch": 0}, "batch size"),
        ({"cpu_threads": 3}, "more than the 2 cores"),
        ({"gpu_models": 1}, "no CUDA GPU"),
        ({"cpu_models": 0, "gpu_models": 0}, "no model replicas"),
        ({"scheduling": "random"}, "scheduling must be"),
        ({"gpu_precision": "int4"}, "gpu_precision"),
        ({"pin_cores": True, "producers": 1, "cpu_threads": 2}, "pin_cores"),
        ({"producers": 1.5}, "must be an integer"),
        ({"omp_wait": "spin"}, "omp_wait must be one of default, passive"),
    ],
    ids=[
        "no-producers",
        "batch-0",
        "threads-over-cores",
        "gpu-without-gpu",
        "no-replicas",
        "bad-scheduling",
        "bad-precision",
        "pinning-overcommit",
        "float-producers",
        "bad-omp-wait",
    ],
)
def test_impossible_configs_are_refused(kwargs: dict, needle: str) -> None:
    """Each impossible value is refused with one line naming it."""
    with pytest.raises(ConfigError, match=needle) as info:
        EngineConfig(**kwargs).validate(cores=2, gpus=0)
    assert "\n" not in str(info.value)


def test_valid_config_round_trips() -> None:
    """A valid config validates to itself and round-trips through its dict."""
    cfg = EngineConfig(producers=2, cpu_models=2, cpu_threads=1, cpu_batch=16, scheduling="static")
    assert cfg.validate(cores=2, gpus=0) is cfg
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    assert "2 producers" in cfg.describe()


def test_unknown_key_is_refused() -> None:
    """An unknown engine setting is refused by name."""
    with pytest.raises(ConfigError, match="unknown engine setting"):
        EngineConfig.from_dict({"producers": 1, "turbo": True})


def test_gpu_config_validates_with_gpus() -> None:
    """GPU replicas validate when a GPU is visible."""
    EngineConfig(cpu_models=0, gpu_models=2, gpu_batch=64).validate(cores=16, gpus=1)


def test_unit_batch_is_smallest_device_batch() -> None:
    """A slot holds the smallest batch of the devices in use."""
    assert EngineConfig(cpu_batch=16, gpu_models=1, gpu_batch=64).unit_batch() == 16
    assert EngineConfig(cpu_models=0, gpu_models=1, gpu_batch=64).unit_batch() == 64


def test_passive_openmp_wait_is_named_where_it_applies() -> None:
    """A CPU replica's wait policy shows in the summary; a GPU-only configuration has no OpenMP team to name."""
    assert EngineConfig(omp_wait="passive").describe().endswith("dynamic, passive OpenMP wait")
    assert "OpenMP" not in EngineConfig().describe()
    assert "OpenMP" not in EngineConfig(cpu_models=0, gpu_models=1, omp_wait="passive").describe()
    assert EngineConfig.from_dict(EngineConfig(omp_wait="passive").to_dict()).omp_wait == "passive"
