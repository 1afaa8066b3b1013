"""The Optuna study end to end on the fake backend: default first, profile, resume, orphans, failures, infeasible."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune.errors import AutotuneError
from autotune.machine import detect_machine
from autotune.tuner.space import load_space
from autotune.tuner.storage import GRACE_FACTOR, writer_storage
from autotune.tuner.study import StudyOptions, run_study

FAKE = "fake:32"

# A small space that stays cheap on the fake backend (1 replica, a few batch sizes and thread counts).
SMALL_SPACE = """\
name: small
device: cpu
params:
  cpu_threads: {type: int, low: 1, high: "min(2, cores)"}
  cpu_batch:   {type: categorical, choices: [4, 8]}
  scheduling:  {type: categorical, choices: [dynamic, static]}
fixed:
  producers: 1
  cpu_models: 1
  gpu_models: 0
defaults:
  cpu_threads: 1
  cpu_batch: 8
  scheduling: dynamic
"""

# Only cpu_batch == 8 is allowed: nearly every proposal is infeasible.
NARROW_SPACE = """\
name: narrow
device: cpu
params:
  cpu_batch: {type: int, low: 4, high: 64}
fixed:
  producers: 1
  cpu_models: 1
  cpu_threads: 1
  gpu_models: 0
constraints:
  - "cpu_batch == 8"
defaults:
  cpu_batch: 8
"""


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "studies"
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(folder))
    return folder


def _options(tmp_path: Path, dataset: Path, text: str = SMALL_SPACE, **kw: Any) -> StudyOptions:
    space = tmp_path / "space.yaml"
    space.write_text(text)
    base: dict[str, Any] = dict(
        space=str(space),
        trials=3,
        rounds=2,
        model=FAKE,
        dataset=str(dataset),
        validate_repeats=1,
        validate_rounds=2,
        trial_timeout_s=120,
        min_timed_images=0,
    )
    base.update(kw)
    return StudyOptions(**base)


def test_study_default_first_profile_and_resume(tmp_path: Path, small_dataset: Path, _studies: Path) -> None:
    lines: list[str] = []
    # finalists=1: no final, the best trial is the pick (the final has its own test below).
    opts = _options(tmp_path, small_dataset, finalists=1)
    out = run_study(opts, log=lines.append)
    machine = detect_machine()
    assert out.study_name.startswith(machine.machine_id)
    assert out.storage == f"sqlite:///{(_studies / 'autotune.db').resolve()}"
    assert out.images_per_s > 0 and out.config.cpu_models == 1
    assert sum(out.trials.values()) >= 3
    assert any(line.startswith("trial 0:") for line in lines)

    study = optuna.load_study(study_name=out.study_name, storage=out.storage)
    assert "final" not in study.user_attrs
    assert out.trial_images_per_s == pytest.approx(max(t.value for t in study.trials if t.value is not None))
    first = study.trials[0]
    space = load_space(opts.space, machine_facts=machine.facts())  # type: ignore[arg-type]
    assert first.user_attrs.get("default") is True
    assert first.params == space.default_params()
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert first.user_attrs["images_per_s"] == pytest.approx(first.value)
    assert study.metric_names == ["images_per_s"]
    assert out.default_images_per_s and out.default_images_per_s > 0

    # Validated on unseen images: the profile keeps both figures and predicts from the validated one.
    names = [c["name"] for c in out.validation["candidates"]]
    assert names[:2] == ["pick", "default"] and out.validation["rule"]["offset"] == out.trial_images
    assert out.images_per_s == pytest.approx(out.validation["candidates"][0]["images_per_s"], abs=1e-3)
    assert out.trial_images_per_s == pytest.approx(study.trials[out.best_trial].value)
    # No profile was in use: the pick goes in use exactly when it beat the safe default in its pairs.
    comparison = out.validation["comparison"]
    assert comparison["baseline"] == "default" and comparison["pairs"] >= 1
    if comparison["same_config"]:  # the pick is the safe default itself: in use, nothing to compare
        assert out.made_current and not comparison["beats"]
    else:
        # One pair asked for; more only while the answer was open (the pick lost a pair) and the time allowed.
        won_all = comparison["wins"] == comparison["pairs"]
        assert out.made_current == comparison["beats"] == (won_all or comparison["p_value"] < 0.05)
        if comparison["pairs"] > 1:  # measured on only because the first pair left the answer open: it was lost
            pick, default = out.validation["candidates"][:2]
            assert pick["runs"][0] <= default["runs"][0]
    assert out.decision and ("; in use: it " in out.decision) == out.made_current
    assert out.profile_path is not None and out.profile_path.is_file()
    assert out.profile_path.parent == _studies / "profiles" / machine.machine_id
    data = json.loads(out.profile_path.read_text())
    for key in (
        "machine_id",
        "machine",
        "config",
        "images_per_s",
        "spread",
        "study",
        "storage",
        "trial",
        "model",
        "model_arch",
        "dataset",
        "dataset_fingerprint",
        "device",
        "versions",
        "date",
        "trial_images_per_s",
        "validated_images_per_s",
        "validation",
        "predicted_seconds_500k",
    ):
        assert key in data, key
    assert data["study"] == out.study_name and data["model"] == FAKE
    assert data["validated_images_per_s"] == pytest.approx(out.images_per_s)
    assert data["predicted_seconds_500k"] == pytest.approx(500_000 / out.images_per_s, rel=1e-3)
    assert data["versions"].get("optuna") == optuna.__version__

    # The same options again resume the same study; the profile in use is validated beside the new pick.
    n_before = len(study.trials)
    again = run_study(_options(tmp_path, small_dataset, trials=1, finalists=1))
    assert again.study_name == out.study_name
    assert len(optuna.load_study(study_name=out.study_name, storage=out.storage).trials) > n_before
    validated = [c["name"] for c in again.validation["candidates"]]
    assert ("current" in validated) == (again.current_images_per_s is not None) == out.made_current
    assert again.made_current == again.validation["comparison"]["beats"]
    assert (again.validation["comparison"]["baseline"] == "current") == out.made_current
    assert again.profile_path != out.profile_path and out.profile_path.is_file()  # every pick is kept


@pytest.mark.slow
def test_orphaned_running_trial_is_failed_and_requeued(tmp_path: Path, small_dataset: Path) -> None:
    # A one-second heartbeat: a trial silent for four seconds belongs to a dead run.
    opts = _options(tmp_path, small_dataset, trials=1, validate_repeats=0, heartbeat_s=1)
    out = run_study(opts)

    # A run killed mid-trial: a RUNNING trial with a heartbeat that stops.
    other = writer_storage(out.storage, heartbeat_s=1)
    study = optuna.load_study(study_name=out.study_name, storage=other)
    space = load_space(opts.space, machine_facts=detect_machine().facts())  # type: ignore[arg-type]
    orphan = study.ask(space.distributions())
    params = dict(orphan.params)
    other.record_heartbeat(orphan._trial_id)
    time.sleep(GRACE_FACTOR + 0.5)

    run_study(opts)
    trials = optuna.load_study(study_name=out.study_name, storage=out.storage).trials
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retried) == 1
    assert retried[0].params == params
    assert retried[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.mark.slow
def test_a_setup_that_always_fails_is_diagnosed(tmp_path: Path, small_dataset: Path) -> None:
    # fake:bad passes the parent's checks but every replica refuses it: each trial fails in its child.
    opts = _options(tmp_path, small_dataset, model="fake:bad", trials=5, validate_repeats=0)
    with pytest.raises(AutotuneError, match="first 3 trials all failed") as info:
        run_study(opts)
    assert "\n" not in str(info.value)
    assert "fake:bad" in str(info.value)


def test_infeasible_proposals_are_recorded_never_run(tmp_path: Path, small_dataset: Path) -> None:
    opts = _options(tmp_path, small_dataset, text=NARROW_SPACE, trials=2, validate_repeats=0)
    out = run_study(opts)
    assert out.trials.get("infeasible", 0) >= 1
    assert out.config.cpu_batch == 8
    trials = optuna.load_study(study_name=out.study_name, storage=out.storage).trials
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert infeasible
    for t in infeasible:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.params["cpu_batch"] != 8
        assert t.user_attrs["infeasible"] == ["cpu_batch == 8"]
        assert "images_per_s" not in t.user_attrs and "config" not in t.user_attrs  # never measured
    ran = [t for t in trials if not t.user_attrs.get("infeasible")]
    assert ran and all(t.params["cpu_batch"] == 8 for t in ran)


def test_resuming_a_study_with_another_space_is_one_line(small_dataset, tmp_path, monkeypatch) -> None:
    """Same study name, different parameter distributions: a clear error instead of Optuna's traceback."""
    from autotune.errors import ConfigError
    from autotune.tuner.study import StudyOptions, run_study

    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    head = "device: cpu\nfixed: {gpu_models: 0, cpu_models: 1, cpu_threads: 1, producers: 1}\nparams:\n"
    ranged = tmp_path / "a.yaml"
    ranged.write_text(head + "  cpu_batch: {type: int, low: 2, high: 4}\n")
    listed = tmp_path / "b.yaml"
    listed.write_text(head + "  cpu_batch: {type: categorical, choices: [2, 4]}\n")
    common = dict(
        trials=1,
        rounds=2,
        model="fake:32",
        dataset=str(small_dataset),
        validate_repeats=0,
        save=False,
        study_name="same-name",
        min_timed_images=0,
    )
    run_study(StudyOptions(space=str(ranged), **common))
    with pytest.raises(ConfigError, match="another search space"):
        run_study(StudyOptions(space=str(listed), **common))


def test_profile_with_a_guarded_backend_records_its_guard(small_dataset, tmp_path, monkeypatch) -> None:
    """A study that picks a non-reference backend saves the guard it checked, so retrieve accepts the profile
    on the model it was tuned with."""
    from autotune.models.loading import resolve_model, weights_hash
    from autotune.tuner.profile import guard_ok_for
    from autotune.tuner.study import StudyOptions, run_study

    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    space = tmp_path / "int8.yaml"
    space.write_text(
        "device: cpu\nfixed: {gpu_models: 0, cpu_models: 1, cpu_threads: 1, producers: 1, cpu_backend: onnx-int8}\n"
        "params:\n  cpu_batch: {type: int, low: 2, high: 4}\n"
    )
    out = run_study(
        StudyOptions(
            space=str(space),
            trials=1,
            rounds=2,
            model="synthetic:tiny",
            dataset=str(small_dataset),
            validate_repeats=0,
            guard_sample=16,
            min_timed_images=0,
        )
    )
    assert out.profile is not None and out.profile.config.cpu_backend == "onnx-int8"
    assert out.profile.guard["passed"] and out.profile.guard["backend"] == "onnx-int8"
    assert guard_ok_for(out.profile, weights_hash(resolve_model("synthetic:tiny")[0]))


def test_a_scan_size_too_small_for_part_of_the_space_refuses_before_any_trial(
    tmp_path: Path, small_dataset: Path, _studies: Path
) -> None:
    """Two replicas of batch 8 need 16 images a round: --scan-size below what that needs is one line, no trial."""
    from autotune.errors import ConfigError

    two = SMALL_SPACE.replace("  cpu_models: 1\n", "")
    two = two.replace("params:\n", "params:\n  cpu_models: {type: int, low: 1, high: 2}\n")
    opts = _options(tmp_path, small_dataset, text=two, scan_size=50, storage=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigError) as info:
        run_study(opts)
    msg = str(info.value)
    assert "\n" not in msg and "--scan-size 64" in msg  # 2 x 8 images x (1 warm-up + 2 timed + 1 drain)
    assert optuna.study.get_all_study_summaries(storage=f"sqlite:///{tmp_path}/s.db") == []


@pytest.mark.slow
def test_a_study_measured_differently_is_never_resumed(tmp_path: Path, small_dataset: Path, _studies: Path) -> None:
    """Same --study-name, another measurement rule: refused in one line; the default name differs instead."""
    from autotune.errors import ConfigError

    first = run_study(_options(tmp_path, small_dataset, trials=1, validate_repeats=0, save=False))
    other = run_study(_options(tmp_path, small_dataset, trials=1, validate_repeats=0, save=False, rounds=3))
    assert other.study_name != first.study_name
    with pytest.raises(ConfigError, match="measured differently \\(rounds changed\\)"):
        run_study(
            _options(
                tmp_path, small_dataset, trials=1, validate_repeats=0, save=False, rounds=3, study_name=first.study_name
            )
        )


def test_the_embedded_corpus_is_built_with_the_callers_progress(
    tmp_path: Path, small_dataset: Path, _studies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --dataset: the study builds the default corpus through the progress factory it was given."""
    from autotune.progress import silent
    from autotune.tuner import options as options_module
    from autotune.tuner.options import prepare_study

    given: list[object] = []

    def default_dataset(progress: object = None) -> Path:
        given.append(progress)
        return small_dataset

    monkeypatch.setattr(options_module, "default_dataset", default_dataset)
    opts = _options(tmp_path, small_dataset)
    opts.dataset = None
    setup = prepare_study(opts, progress=silent)
    assert given == [silent] and setup.dataset == str(small_dataset)


# Replica layouts as a parameter pair: the final adds the best trial's untried layout neighbours.
LAYOUT_SPACE = """\
name: layouts
device: cpu
params:
  cpu_models:  {type: int, low: 1, high: 2}
  cpu_threads: {type: int, low: 1, high: 2}
  cpu_batch:   {type: categorical, choices: [4, 8]}
fixed:
  producers: 1
  gpu_models: 0
constraints:
  - "cpu_models * cpu_threads <= 2"
defaults:
  cpu_models: 1
  cpu_threads: 1
  cpu_batch: 8
"""


@pytest.mark.slow  # the first test of this file runs the same study with finalists=1 and checks the same
def test_one_finalist_is_the_best_trial(tmp_path: Path, small_dataset: Path) -> None:
    """finalists=1 skips the final: the pick is the best trial, as before."""
    out = run_study(_options(tmp_path, small_dataset, trials=3, finalists=1))
    study = optuna.load_study(study_name=out.study_name, storage=out.storage)
    assert "final" not in study.user_attrs
    assert out.trial_images_per_s == pytest.approx(max(t.value for t in study.trials if t.value is not None))
