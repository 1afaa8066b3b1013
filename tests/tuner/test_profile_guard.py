"""The profiles' accuracy policy: which recorded checks let a profile run, and verifying a profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autotune.engine.config import EngineConfig
from autotune.models.backends import backend_unavailable
from autotune.models.guard import build_reference, check_backend
from autotune.tuner.profile import Profile, guard_ok_for, guard_record, verify_profile

SAMPLE = 24


def _profile(config: EngineConfig, guard: dict[str, Any] | None = None) -> Profile:
    """A minimal profile running config, with an optional guard record."""
    return Profile(
        machine_id="m", machine="m", config=config, images_per_s=1.0, spread=0.0, study="s", storage="x",
        trial=0, scan_size=1, model="synthetic:tiny", model_arch="a", dataset="d", dataset_fingerprint="f",
        device="cpu", guard=guard or {},
    )


def test_guard_ok_for() -> None:
    """Eager fp32 needs no check; anything else needs a passed check on these weights, for this backend."""
    eager = _profile(EngineConfig(cpu_backend="eager"))
    assert guard_ok_for(eager, "any")
    int8 = _profile(EngineConfig(cpu_backend="int8"))
    assert not guard_ok_for(int8, "h1")  # never checked
    record = {"model": "m", "weights_hash": "h1", "backend": "int8", "precision": "fp32", "device": "cpu",
              "min_cosine": 0.999, "passed": True}
    int8.guard = dict(record)
    assert guard_ok_for(int8, "h1")
    assert not guard_ok_for(int8, "h2")  # checked on other weights
    int8.guard = {**record, "passed": False}
    assert not guard_ok_for(int8, "h1")
    onnx = _profile(EngineConfig(cpu_backend="onnx-int8"), guard=dict(record))
    assert not guard_ok_for(onnx, "h1")  # the check was for another backend
    gpu = _profile(EngineConfig(cpu_models=0, gpu_models=1, gpu_precision="fp16"))
    assert not guard_ok_for(gpu, "h1")
    gpu.guard = {**record, "backend": "eager", "precision": "fp16", "device": "cuda:0"}
    assert guard_ok_for(gpu, "h1")
    assert guard_ok_for(_profile(EngineConfig(cpu_models=0, gpu_models=1, gpu_precision="fp32")), "h1")


def test_verify_profile_records_the_check(small_dataset: Path, tiny_model: str) -> None:
    """verify_profile checks the profile's backend on the given model and stores what guard_ok_for reads."""
    if backend_unavailable("int8"):
        pytest.skip("int8 unavailable")
    profile = _profile(EngineConfig(cpu_backend="int8"))
    result = verify_profile(profile, tiny_model, small_dataset, sample=SAMPLE)
    assert result.passed and result.backend == "int8"
    guard = profile.guard
    assert {"model", "weights_hash", "backend", "min_cosine", "passed"} <= set(guard)
    assert guard["model"] == tiny_model and guard["backend"] == "int8" and guard["passed"]
    assert guard_ok_for(profile, guard["weights_hash"])
    assert not guard_ok_for(profile, "0" * 16)
    eager = _profile(EngineConfig())
    assert verify_profile(eager, tiny_model, small_dataset, sample=SAMPLE).passed
    assert eager.guard["backend"] == "eager" and eager.guard["min_cosine"] == 1.0


def test_guard_record_keeps_every_check(small_dataset: Path, tiny_model: str) -> None:
    """The record's top level is the worst check; every check is listed; guard_ok_for accepts it."""
    reference = build_reference(small_dataset, tiny_model, sample=SAMPLE)
    eager = check_backend(reference, tiny_model, "eager", "fp32")
    record = guard_record([eager])
    assert record["passed"] and record["min_cosine"] == 1.0 and len(record["checked"]) == 1
    assert record["weights_hash"] == reference.weights_hash
    assert guard_ok_for(_profile(EngineConfig(), guard=record), reference.weights_hash)
