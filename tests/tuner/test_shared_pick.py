"""A shared study's pick published in its storage and installed per machine (SQLite storage: no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.profile import Profile, current_profile, new_profile_id
from autotune.tuner.shared_pick import pick_key, pull_picks, wait_for_pick
from autotune.tuner.storage import reader_storage


def _pick(machine_id: str) -> Profile:
    """A validated pick of ``machine_id`` for the fake model."""
    return Profile(machine_id=machine_id, machine="Test CPU, 2 cores", config=EngineConfig(cpu_batch=8),
                   images_per_s=100.0, spread=0.0, study="s", storage="x", trial=0, scan_size=64, model="fake:32",
                   model_arch="fake:32", dataset="/data", dataset_fingerprint="f", device="cpu",
                   id=new_profile_id(), validated_images_per_s=100.0)  # fmt: skip


def _published(tmp_path: Path, picks: dict[str, tuple[Profile, bool]]) -> str:
    """A SQLite storage with one study per entry, its pick published as a validating worker does."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for name, (prof, in_use) in picks.items():
        study = optuna.create_study(study_name=name, storage=url)
        study.set_user_attr(pick_key(4), {"profile": prof.to_dict(), "in_use": in_use})
    return url


def test_pull_installs_this_machines_pick_once_and_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    mine = _pick(detect_machine().machine_id)
    url = _published(tmp_path, {"mine": (mine, True), "theirs": (_pick("another-machine-8c"), True)})
    for _ in range(2):  # a second pull changes nothing
        (got,) = pull_picks(url)
        assert got.profile.id == mine.id and got.in_use and got.study == "mine"
    folder = tmp_path / "studies" / "profiles" / mine.machine_id
    assert sorted(p.name for p in folder.glob("*.json")) == sorted([f"{mine.id}.json", "current.json"])
    assert json.loads((folder / f"{mine.id}.json").read_text())["config"]["cpu_batch"] == 8
    now = current_profile(mine.machine_id, "fake:32")
    assert now is not None and now.id == mine.id
    assert not (tmp_path / "studies" / "profiles" / "another-machine-8c").exists()
    with pytest.raises(ConfigError, match="study 'nope' not found"):
        pull_picks(url, "nope")


def test_a_pick_not_in_use_is_installed_but_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    mine = _pick(detect_machine().machine_id)
    (got,) = pull_picks(_published(tmp_path, {"mine": (mine, False)}))
    assert got.path.is_file() and not got.in_use and current_profile(mine.machine_id, "fake:32") is None


def test_waiting_for_a_pick_nobody_publishes_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="s", storage=url)
    assert wait_for_pick(reader_storage(url), "s", 4, limit_s=0.5) is None
