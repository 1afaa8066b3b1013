"""Per-machine profiles: round trip, history and current pointers, legacy files, notes away from home,
malformed files, a full disk."""

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
    CURRENT_FILE,
    PROFILE_FORMAT,
    Profile,
    arch_key,
    check_profile,
    current_profile,
    find_profile,
    history,
    list_profiles,
    load_profile,
    profile_path,
    profiles_dir,
    save_profile,
    use_profile,
)


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Profiles of this test live in its own studies folder."""
    folder = tmp_path / "studies"
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(folder))
    return folder


def _profile(machine_id: str = "test-machine-2c", **kw: Any) -> Profile:
    """A saved-able profile of a 2-core test machine; keywords override fields."""
    base: dict[str, Any] = dict(
        machine_id=machine_id,
        machine="Test CPU, 2 cores",
        images_per_s=250.0,
        spread=0.04,
        config=EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16, scheduling="static"),
        study=f"{machine_id}.cpu.fake-32.abcdef12",
        storage="sqlite:///x.db",
        trial=3,
        scan_size=96,
        model="fake:32",
        model_arch="fake:32",
        dataset="/data",
        dataset_fingerprint="abcdef1234",
        device="cpu",
        versions={"torch": "2.13.0"},
        rechecks=[240.0, 250.0, 260.0],
    )
    base.update(kw)
    return Profile(**base)


def _files(folder: Path) -> list[str]:
    """Names in a folder, without the current pointer's lock file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_round_trip(_studies: Path) -> None:
    """A saved profile loads back equal, stamped, with its derived figures in the file."""
    prof = _profile()
    path = save_profile(prof)
    assert path == profiles_dir() / "test-machine-2c" / f"{prof.id}.json"
    assert path.parent.parent == _studies / "profiles"
    assert _files(path.parent) == sorted([path.name, CURRENT_FILE])  # no temporary left
    back = load_profile(path)
    assert back == prof
    assert back.config == prof.config and back.config.scheduling == "static"
    assert back.date and back.id and back.saved_by  # stamped on save
    assert back.format == PROFILE_FORMAT and not back.legacy
    data = json.loads(path.read_text())
    assert data["config"]["cpu_models"] == 2
    assert data["predicted_seconds_500k"] == 2000.0


def test_new_fields_and_validation_ratio(_studies: Path) -> None:
    """Trial over validated rate is the validation ratio, None unless both are known; it survives a save."""
    prof = _profile(trial_images_per_s=300.0, validated_images_per_s=250.0, validation={"runs": [249.0, 251.0]})
    assert prof.validation_ratio == pytest.approx(1.2)
    assert _profile(trial_images_per_s=300.0).validation_ratio is None
    assert _profile(validated_images_per_s=250.0).validation_ratio is None
    back = load_profile(save_profile(prof))
    assert back.validation == {"runs": [249.0, 251.0]} and back.validation_ratio == pytest.approx(1.2)
    assert back.unstable is False


def test_history_keeps_every_save_and_use_switches_back(_studies: Path) -> None:
    """Every save is a new history file; use points the architecture back at an older one."""
    first, second = _profile(images_per_s=100.0), _profile(images_per_s=200.0)
    one, two = save_profile(first), save_profile(second)
    assert one != two and one.is_file() and two.is_file()
    assert first.id < second.id  # ids sort by save time, even within one second
    assert current_profile("test-machine-2c", "fake:32").id == second.id  # type: ignore[union-attr]
    listed = history("test-machine-2c")
    assert {p.id: used for p, used in listed} == {first.id: False, second.id: True}
    assert use_profile(first.id).id == first.id
    assert current_profile("test-machine-2c", "fake:32").images_per_s == 100.0  # type: ignore[union-attr]
    assert {p.id: used for p, used in history("test-machine-2c")} == {first.id: True, second.id: False}
    # Saving the same object again is a new entry, never an overwrite.
    again = save_profile(first)
    assert again != one and load_profile(one).images_per_s == 100.0


def test_make_current_false_keeps_the_pointer(_studies: Path) -> None:
    """A save with make_current=False joins the history without taking over."""
    kept = _profile(images_per_s=100.0)
    save_profile(kept)
    save_profile(_profile(images_per_s=999.0), make_current=False)
    assert current_profile("test-machine-2c", "fake:32").id == kept.id  # type: ignore[union-attr]
    assert len(history("test-machine-2c")) == 2


def test_current_is_per_architecture(_studies: Path) -> None:
    """Each model architecture has its own profile in use."""
    here = detect_machine().machine_id
    small = _profile(here, model="fake:16", model_arch="fake:16", images_per_s=900.0)
    save_profile(small)
    assert find_profile("auto", model="fake:32") is None  # only another architecture was tuned here
    assert find_profile("auto", model="fake:16").id == small.id  # type: ignore[union-attr]
    big = _profile(here, images_per_s=90.0)
    save_profile(big)
    assert find_profile("auto", model="fake:32").id == big.id  # type: ignore[union-attr]
    assert find_profile("auto", model="fake:16").id == small.id  # type: ignore[union-attr]
    assert find_profile("auto").id == big.id  # type: ignore[union-attr]  # no model: the newest in use
    pointers = json.loads((profiles_dir() / here / CURRENT_FILE).read_text())["current"]
    assert pointers[arch_key("fake:16")] == {**pointers[arch_key("fake:16")], "id": small.id, "arch": "fake:16"}


def test_current_never_hands_out_another_architecture(_studies: Path) -> None:
    """A pointer whose file says another architecture (hand-edited, or a hash collision) is not followed."""
    prof = _profile(model_arch="fake:16")
    save_profile(prof)
    home = profiles_dir() / "test-machine-2c"
    data = json.loads((home / CURRENT_FILE).read_text())
    data["current"][arch_key("fake:32")] = data["current"].pop(arch_key("fake:16"))
    (home / CURRENT_FILE).write_text(json.dumps(data))
    assert current_profile("test-machine-2c", "fake:32") is None


def test_legacy_file_is_listed_not_current(_studies: Path) -> None:
    """A format-1 file is listed as legacy, never in use until use imports it."""
    here = detect_machine().machine_id
    data = _profile(here, date="2026-11-28T10:23:00+00:00").to_dict()
    for key in (
        "format",
        "id",
        "trial_images_per_s",
        "validated_images_per_s",
        "validation",
        "unstable",
        "saved_by",
        "validation_ratio",
    ):
        data.pop(key)  # what a format-1 file holds
    legacy = profiles_dir() / f"{here}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(data))
    [(prof, in_use)] = history(here)
    assert prof.legacy and not in_use and prof.id == "20261128-102300-legacy"
    assert profile_path(prof) == legacy
    assert find_profile("auto", model="fake:32") is None and find_profile("auto") is None
    assert find_profile(str(legacy)) == prof.__class__.from_dict(data)  # still readable as a file
    assert find_profile(prof.id).legacy  # type: ignore[union-attr]  # and by id
    # `use` copies it into the history under the same id and points at it; it is listed once.
    use_profile(prof.id)
    [(used, in_use)] = history(here)
    assert used.id == prof.id and in_use and not used.legacy
    assert find_profile("auto", model="fake:32").id == prof.id  # type: ignore[union-attr]


def test_use_unknown_id_is_one_line(_studies: Path) -> None:
    """An unknown id is one ConfigError line naming the listing command."""
    save_profile(_profile())
    with pytest.raises(ConfigError) as info:
        use_profile("20991231-000000-beef")
    assert "autotune profile list" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        find_profile("nope")


def test_save_to_a_path_writes_that_file_only(_studies: Path, tmp_path: Path) -> None:
    """Saving to a path writes that file, not the history."""
    prof = _profile()
    path = save_profile(prof, path=tmp_path / "mine.json")
    assert path == tmp_path / "mine.json" and load_profile(path) == prof
    assert not profiles_dir().exists()


def test_folder_by_position_still_works(tmp_path: Path) -> None:
    """Older callers pass the folder by position (``save_profile(prof, folder)``)."""
    prof = _profile()
    path = save_profile(prof, tmp_path / "elsewhere")
    assert path.parent == tmp_path / "elsewhere" / "test-machine-2c"
    assert current_profile("test-machine-2c", "fake:32", folder=tmp_path / "elsewhere") == prof


def test_predicted_seconds_500k() -> None:
    """The 500,000-image prediction is images over the steady rate plus the overhead."""
    assert _profile(images_per_s=100.0).predicted_seconds_500k == pytest.approx(5000.0)
    assert _profile(images_per_s=0.0).predicted_seconds_500k == float("inf")


def test_list_profiles_skips_unreadable(_studies: Path) -> None:
    """An unreadable profile file is skipped by listings."""
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
    """A profile away from its machine or architecture gets one note per difference."""
    prof = _profile()
    assert check_profile(prof, machine_id="test-machine-2c", model_arch="fake:32") == []
    notes = check_profile(prof, machine_id="other-machine", model_arch="fake:64")
    assert len(notes) == 2
    assert "other-machine" in notes[0] and "test-machine-2c" in notes[0]
    assert "fake:64" in notes[1]


def test_find_profile(_studies: Path, recwarn: pytest.WarningsRecorder) -> None:
    """find_profile resolves none, auto, ids and files."""
    assert find_profile(None) is None
    assert find_profile("none") is None
    assert find_profile("auto") is None  # nothing saved for this machine yet
    here = detect_machine().machine_id
    save_profile(_profile(here))
    prof = find_profile("auto", model="fake:32")
    assert prof is not None and prof.machine_id == here
    elsewhere = save_profile(_profile("another-machine"))
    notes: list[str] = []
    assert find_profile(str(elsewhere), model="fake:64", say=notes.append) is not None
    assert len(notes) == 2 and "another-machine" in notes[0] and "architecture" in notes[1]
    assert find_profile(str(elsewhere), warn=False, say=notes.append) is not None and len(notes) == 2
    assert not recwarn.list  # notes, never Python warnings


def test_find_profile_without_say_prints_one_line(_studies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without say, a note goes to stderr as one line."""
    elsewhere = save_profile(_profile("another-machine"))
    assert find_profile(str(elsewhere)) is not None
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "another-machine" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({"machine_id": "x"}),
        json.dumps({**_profile().to_dict(), "colour": "blue"}),
        json.dumps({**_profile().to_dict(), "config": {"warp": 9}}),
    ],
    ids=["syntax", "list", "missing-keys", "unknown-key", "bad-config"],
)
def test_malformed_profile_is_one_line(tmp_path: Path, text: str) -> None:
    """A malformed profile file is one ConfigError line."""
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert "\n" not in str(info.value)
    # The engine's own refusal of a bad config does not name the file (see the report to the lead).
    assert str(path) in str(info.value) or "warp" in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    """A missing profile file is one ConfigError line."""
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "nope.json")


def test_save_on_a_full_disk_keeps_the_old_profile(_studies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while a new profile is flushed: one-line DiskFullError, the old profile intact and
    still the one in use."""
    path = save_profile(_profile(images_per_s=100.0))

    def full(_path: Path) -> None:
        """The disk is full when the new file is flushed."""
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "fsync_file", full)
    with pytest.raises(DiskFullError) as info:
        save_profile(_profile(images_per_s=999.0))
    assert "\n" not in str(info.value) and str(path.parent) in str(info.value)
    assert load_profile(path).images_per_s == 100.0
    assert _files(path.parent) == sorted([path.name, CURRENT_FILE])
    assert current_profile("test-machine-2c", "fake:32").images_per_s == 100.0  # type: ignore[union-attr]
