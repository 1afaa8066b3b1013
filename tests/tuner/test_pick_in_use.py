"""The study's answer reaches the next run: decided by comparison on a noisy machine, named when it does not."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autotune.cli import main
from autotune.tuner.profile import current_profile, model_arch
from autotune.tuner.report import study_report
from autotune.tuner.study import StudyOptions, run_study

FAKE = "fake:32"
DELAY_S = 0.004  # per image: a replica mostly sleeps, so two replicas run twice as fast whatever the CPU does

# Every point runs two replicas: the pick is twice as fast as the safe default's one replica.
TWO_REPLICAS = """\
name: two-replicas
device: cpu
params:
  cpu_batch: {type: categorical, choices: [8, 16]}
fixed: {producers: 1, cpu_models: 2, cpu_threads: 1, gpu_models: 0}
defaults: {cpu_batch: 8}
"""
# Every point runs one replica of one thread: slower than a two-replica profile in use.
ONE_REPLICA = TWO_REPLICAS.replace("cpu_models: 2", "cpu_models: 1").replace("two-replicas", "one-replica")

# A CPU hog that switches on and off every 0.3 s, for as long as the test lets it live.
HOG = """\
import time
while True:
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    time.sleep(0.3)
"""


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "studies"
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(folder))
    return folder


def _options(tmp_path: Path, dataset: Path, space: str, **kw: Any) -> StudyOptions:
    path = tmp_path / f"{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(space)
    base: dict[str, Any] = dict(
        space=str(path), trials=2, rounds=2, model=FAKE, dataset=str(dataset), validate_rounds=2,
        trial_timeout_s=120, min_timed_images=0, fake_delay_s=DELAY_S, finalists=1,
    )  # fmt: skip
    base.update(kw)
    return StudyOptions(**base)


def test_a_pick_that_wins_every_pair_on_a_noisy_machine_goes_in_use(tmp_path: Path, small_dataset: Path) -> None:
    """A CPU hog switching on and off through the study: the pick beats the safe default in every pair, and is
    put in use; a later pick that does not beat it is saved, not used, and the line names the command."""
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        lines: list[str] = []
        out = run_study(_options(tmp_path, small_dataset, TWO_REPLICAS), log=lines.append)
    finally:
        hog.kill()
        hog.wait()
    comparison = out.validation["comparison"]
    assert comparison["baseline"] == "default" and comparison["pairs"] >= 5
    assert comparison["wins"] == comparison["pairs"] and comparison["p_value"] < 0.05
    assert out.made_current and "in use: it beats the safe default" in lines[-1]
    in_use = current_profile(out.profile.machine_id, model_arch(FAKE))  # type: ignore[union-attr]
    assert in_use is not None and in_use.id == out.profile.id  # type: ignore[union-attr]
    assert in_use.phase_seconds and set(in_use.phase_seconds) >= {"search", "final", "validation"}
    report = study_report(storage=out.storage, study_name=out.study_name)  # what `report` and the dashboard read
    assert report["decision"] == lines[-1] and set(report["phase_seconds"]) >= {"search", "final", "validation"}

    slower = run_study(_options(tmp_path, small_dataset, ONE_REPLICA, study_name="slower"), log=lines.append)
    assert slower.validation["comparison"]["baseline"] == "current"
    assert not slower.made_current and not slower.validation["comparison"]["beats"]
    assert lines[-1].startswith(f"profile {slower.profile.id}: ")  # type: ignore[union-attr]
    assert lines[-1].endswith(f"to use it anyway: autotune profile use {slower.profile.id}")  # type: ignore[union-attr]
    kept = current_profile(out.profile.machine_id, model_arch(FAKE))  # type: ignore[union-attr]
    assert kept is not None and kept.id == out.profile.id  # type: ignore[union-attr]


def test_timeout_bounds_the_whole_study(
    tmp_path: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--timeout` stops the search early enough to validate and save: a profile, and where the time went."""
    space = tmp_path / "space.yaml"
    space.write_text(TWO_REPLICAS.replace("{type: categorical, choices: [8, 16]}", "{type: int, low: 2, high: 64}"))
    timeout = 15.0
    t0 = time.monotonic()
    args = ["study", "--space", str(space), "--model", FAKE, "--dataset", str(small_dataset), "--trials", "50",
            "--timeout", str(timeout), "--rounds", "3", "--json"]  # fmt: skip
    assert main(args) == 0
    took = time.monotonic() - t0
    out = json.loads(capsys.readouterr().out)
    assert out["stopped_early"] and out["profile"] and Path(out["profile"]).is_file()
    assert set(out["phase_seconds"]) == {"setup", "search", "final", "validation", "save"}
    assert out["trials_infeasible"] == 0 and out["pairs"] >= 1
    # Within the timeout, plus one trial's start-up (the trial process is spawned on the first trial).
    assert sum(out["phase_seconds"].values()) <= timeout + 10 and took <= timeout + 15


def test_retrieve_after_a_study_runs_what_the_study_decided(
    tmp_path: Path, small_dataset: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """study, then retrieve --rescan with --profile auto (its default): the pick when the study put it in use,
    else the safe default with a note naming the saved pick and the command."""
    space = tmp_path / "space.yaml"
    space.write_text(TWO_REPLICAS.replace("[8, 16]", "[8]"))
    common = ["--model", tiny_model, "--dataset", str(small_dataset), "--json"]
    assert main(["study", "--space", str(space), "--trials", "1", "--rounds", "2", *common]) == 0
    study = json.loads(capsys.readouterr().out)
    args = ["retrieve", "a photo of Felis catus", "--rescan", "--index-dir", str(tmp_path / "idx"),
            "--out", str(tmp_path / "out"), *common]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    ran = json.loads(captured.out)["config"]
    if study["profile_in_use"]:
        assert ran == study["config"] and "no profile in use" not in captured.err
    else:
        assert ran != study["config"]
        saved_id = Path(study["profile"]).stem
        assert f"is saved but not in use: autotune profile use {saved_id}" in captured.err
