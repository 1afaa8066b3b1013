"""Per-machine profiles: round trip, prediction, listing, warnings away from home, malformed files."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from autotune import atomic
from autotune.atomic import DiskFullError, temporary_name
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.profile import (
    Profile,
    check_profile,
    find_profile,
    list_profiles,
    load_profile,
    profiles_dir,
    save_profile,
)


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "studies"
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(folder))
    return folder


def _profile(machine_id: str = "test-machine-2c", **kw: Any) -> Profile:
    base: dict[str, Any] = dict(
        machine_id=machine_id, machine="Test CPU, 2 cores", images_per_s=250.0, spread=0.04,
        config=EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16, scheduling="static"),
        study=f"{machine_id}.cpu.fake-32.abcdef12", storage="sqlite:///x.db", trial=3, scan_size=96,
        model="fake:32", model_arch="fake:32", dataset="/data", dataset_fingerprint="abcdef1234", device="cpu",
        versions={"torch": "2.13.0"}, rechecks=[240.0, 250.0, 260.0],
    )
    base.update(kw)
    return Profile(**base)


def test_round_trip(_studies: Path) -> None:
    prof = _profile()
    path = save_profile(prof)
    assert path == profiles_dir() / "test-machine-2c.json"
    assert path.parent == _studies / "profiles"
    assert [p.name for p in path.parent.iterdir()] == ["test-machine-2c.json"]  # no temporary left
    back = load_profile(path)
    assert back == prof
    assert back.config == prof.config and back.config.scheduling == "static"
    assert back.date  # stamped on save
    data = json.loads(path.read_text())
    assert data["config"]["cpu_models"] == 2
    assert data["predicted_seconds_500k"] == 2000.0


def test_predicted_seconds_500k() -> None:
    assert _profile(images_per_s=100.0).predicted_seconds_500k == pytest.approx(5000.0)
    assert _profile(images_per_s=0.0).predicted_seconds_500k == float("inf")


def test_list_profiles_skips_unreadable(_studies: Path) -> None:
    assert list_profiles() == []
    save_profile(_profile("machine-a"))
    save_profile(_profile("machine-b", images_per_s=10.0))
    (profiles_dir() / "broken.json").write_text("{not json")
    found = list_profiles()
    assert [p.machine_id for p in found] == ["machine-a", "machine-b"]


def test_list_profiles_skips_temporary_files(_studies: Path) -> None:
    """A whole profile still under its temporary name (a save in flight, or killed before the rename) is not
    listed a second time."""
    path = save_profile(_profile("machine-a"))
    temporary_name(path).write_text(path.read_text())
    assert [p.machine_id for p in list_profiles()] == ["machine-a"]


def test_check_profile_warnings() -> None:
    prof = _profile()
    assert check_profile(prof, machine_id="test-machine-2c", model_arch="fake:32") == []
    notes = check_profile(prof, machine_id="other-machine", model_arch="fake:64")
    assert len(notes) == 2
    assert "other-machine" in notes[0] and "test-machine-2c" in notes[0]
    assert "fake:64" in notes[1]


def test_find_profile(_studies: Path) -> None:
    assert find_profile(None) is None
    assert find_profile("none") is None
    assert find_profile("auto") is None  # nothing saved for this machine yet
    here = detect_machine().machine_id
    save_profile(_profile(here))
    prof = find_profile("auto", model="fake:32")
    assert prof is not None and prof.machine_id == here
    elsewhere = save_profile(_profile("another-machine"))
    with pytest.warns(UserWarning, match="another-machine"):
        assert find_profile(str(elsewhere)) is not None
    with pytest.warns(UserWarning, match="architecture"):
        find_profile("auto", model="fake:64")


@pytest.mark.parametrize(
    "text",
    ["{not json", "[]", json.dumps({"machine_id": "x"}), json.dumps({**_profile().to_dict(), "colour": "blue"}),
     json.dumps({**_profile().to_dict(), "config": {"warp": 9}})],
    ids=["syntax", "list", "missing-keys", "unknown-key", "bad-config"],
)
def test_malformed_profile_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert "\n" not in str(info.value)
    # The engine's own refusal of a bad config does not name the file (see the report to the lead).
    assert str(path) in str(info.value) or "warp" in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "nope.json")


def test_save_on_a_full_disk_keeps_the_old_profile(_studies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while a new profile is flushed: one-line DiskFullError, the old profile intact."""
    path = save_profile(_profile(images_per_s=100.0))

    def full(_path: Path) -> None:
        """The disk is full when the new file is flushed."""
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "fsync_file", full)
    with pytest.raises(DiskFullError) as info:
        save_profile(_profile(images_per_s=999.0))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert load_profile(path).images_per_s == 100.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]
