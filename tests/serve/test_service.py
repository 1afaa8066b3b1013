"""The search service without HTTP: what /api/info says when the profile in use moves to another index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import autotune.serve._run as serve_run
from autotune.engine.config import EngineConfig
from autotune.machine import detect_machine
from autotune.serve import ServeOptions, open_service
from autotune.tuner.profile import Profile, model_arch, save_profile


def test_info_says_when_the_profile_in_use_keys_another_index(
    small_dataset: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    monkeypatch.setattr(serve_run, "_PROFILE_CHECK_S", 0.0)  # the test looks again at once
    said: list[str] = []
    service = open_service(ServeOptions(dataset=str(small_dataset), model=tiny_model, port=0), log=said.append)
    info = service.info()
    assert info["note"] is None and info["built_by_profile"] is None and info["images"] == 48
    assert any(line.startswith("embedding 48 images") for line in said)
    # A profile put in use now whose recipe differs (GPU replicas join the index key): another index folder.
    machine = detect_machine()
    config = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, gpu_models=1, gpu_precision="fp32")
    fields: dict[str, Any] = dict(
        machine_id=machine.machine_id, machine=machine.summary(), config=config, images_per_s=99.0, spread=0.0,
        study="s", storage="sqlite://", trial=0, scan_size=16, model=tiny_model, model_arch=model_arch(tiny_model),
        dataset=str(small_dataset), dataset_fingerprint="", device="cpu+gpu",
    )  # fmt: skip
    save_profile(Profile(**fields))
    note = service.info()["note"]
    assert note is not None and "keys another index" in note and "keeps answering from the index it started" in note
    assert service.info()["images"] == 48  # still answering from the one it started with
