"""`autotune profile list|use|show` and the profile `retrieve` picks: per machine and model architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autotune import console
from autotune.cli import main
from autotune.engine.config import EngineConfig
from autotune.machine import detect_machine
from autotune.retrieval import safe_default_config
from autotune.tuner.profile import Profile, save_profile


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Profiles go to a fresh folder for each test."""
    folder = tmp_path / "studies"
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(folder))
    return folder


def _saved(**kw: Any) -> Profile:
    """Save a profile of this machine (architecture ``fake:32`` unless given) and return it."""
    machine = detect_machine()
    config = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16, cpu_backend="int8")
    base: dict[str, Any] = dict(
        machine_id=machine.machine_id, machine=machine.summary(), config=config, images_per_s=250.0, spread=0.04,
        study="s", storage="sqlite://", trial=3, scan_size=96, model="fake:32", model_arch="fake:32", dataset="/d",
        dataset_fingerprint="", device="cpu", trial_images_per_s=300.0, validated_images_per_s=250.0,
    )  # fmt: skip
    base.update(kw)
    prof = Profile(**base)
    save_profile(prof)
    return prof


def _list(capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, Any]]:
    """`autotune profile list --json` as data."""
    assert main(["profile", "list", "--json", *extra]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_list_json_and_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert _list(capsys) == []
    first, second = _saved(images_per_s=100.0), _saved(images_per_s=200.0)
    _saved(machine_id="another-machine-2c")
    rows = _list(capsys)
    assert [(r["id"], r["in_use"]) for r in rows] == [(second.id, True), (first.id, False)]  # newest first
    assert rows[0]["validation_ratio"] == 1.2 and rows[0]["config"]["cpu_backend"] == "int8"  # every field
    assert len(_list(capsys, "--all")) == 3
    assert main(["profile", "use", first.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == first.id
    assert [(r["id"], r["in_use"]) for r in _list(capsys)] == [(second.id, False), (first.id, True)]
    assert main(["profile", "show", "auto", "--model", "fake:32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == first.id


def test_use_unknown_id_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "use", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "autotune profile list" in err and len(err.splitlines()) == 1


def test_list_table_fits_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console.console, "_width", 80)
    kept = _saved(unstable=True)
    _saved(model_arch="vit-768x12-p32-224/proj512", model="openai/clip-vit-base-patch32")
    assert main(["profile", "list"]) == 0
    out = capsys.readouterr().out
    assert kept.id in out and "vit768x12p32" in out and "1.20" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert sum(1 for line in out.splitlines() if line.startswith("20")) == 2  # one line a profile


def test_retrieve_without_a_profile_for_the_architecture(
    small_dataset: Path, tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only another architecture was tuned here: retrieve runs the safe default and says so in one line."""
    _saved()  # fake:32, never the tiny model's architecture
    args = ["retrieve", "a photo of Felis catus", "--dataset", str(small_dataset), "--model", tiny_model,
            "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "profile" in line]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("no profile in use for this model's architecture (")
    assert "safe default" in lines[0] and lines[0].endswith(f"run autotune study --model {tiny_model}")
    assert json.loads(captured.out)["config"] == safe_default_config().describe()


def test_the_safe_default_names_a_saved_profile_not_in_use(
    small_dataset: Path, tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study's pick that was saved but not put in use: retrieve names the fastest such profile and the command."""
    from autotune.tuner.profile import model_arch

    tiny = {"model": tiny_model, "model_arch": model_arch(tiny_model), "id": "", "date": ""}
    base = _saved(model="fake:32").__dict__  # another architecture's profile, in use: never named
    slow = Profile(**{**base, **tiny, "validated_images_per_s": 90.0})
    fast = Profile(**{**base, **tiny, "validated_images_per_s": 180.0})
    for prof in (slow, fast):
        save_profile(prof, make_current=False)
    args = ["retrieve", "a photo of Felis catus", "--dataset", str(small_dataset), "--model", tiny_model,
            "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    note = next(line for line in captured.err.splitlines() if line.startswith("no profile in use"))
    assert f"profile {fast.id} (" in note and "180.0 images/s validated" in note
    assert note.endswith(f"is saved but not in use: autotune profile use {fast.id}")
    assert json.loads(captured.out)["config"] == safe_default_config().describe()
