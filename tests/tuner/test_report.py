"""`autotune report`: a study's counts, top configurations, gain over the default, and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.report import study_report, top_text
from autotune.tuner.study import StudyOptions, run_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISTS = {
    "producers": IntDistribution(1, 4),
    "cpu_threads": IntDistribution(1, 2),
    "cpu_batch": IntDistribution(8, 64, log=True),
    "scheduling": CategoricalDistribution(["dynamic", "static"]),
}
# (state, value, params, extra user attrs)
CRAFTED: list[tuple[TrialState, float | None, dict[str, Any], dict[str, Any]]] = [
    (TrialState.COMPLETE, 100.0, {"producers": 1, "cpu_threads": 2, "cpu_batch": 32, "scheduling": "dynamic"},
     {"default": True}),
    (TrialState.COMPLETE, 150.0, {"producers": 2, "cpu_threads": 1, "cpu_batch": 16, "scheduling": "static"}, {}),
    (TrialState.PRUNED, None, {"producers": 4, "cpu_threads": 2, "cpu_batch": 64, "scheduling": "dynamic"},
     {"infeasible": ["producers + cpu_threads <= 4"]}),
    (TrialState.COMPLETE, 120.0, {"producers": 2, "cpu_threads": 2, "cpu_batch": 8, "scheduling": "dynamic"}, {}),
    (TrialState.PRUNED, None, {"producers": 1, "cpu_threads": 1, "cpu_batch": 8, "scheduling": "static"},
     {"shard_images_per_s": [40.0]}),
    (TrialState.FAIL, None, {"producers": 3, "cpu_threads": 1, "cpu_batch": 64, "scheduling": "static"},
     {"fail_reason": "out of memory"}),
    (TrialState.COMPLETE, 90.0, {"producers": 1, "cpu_threads": 1, "cpu_batch": 64, "scheduling": "static"}, {}),
    (TrialState.COMPLETE, 149.0, {"producers": 2, "cpu_threads": 1, "cpu_batch": 16, "scheduling": "static"}, {}),
]


def _crafted_study(url: str, name: str, rows: list[tuple[TrialState, float | None, dict[str, Any], dict[str, Any]]]
                   ) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_metric_names(["images_per_s"])
    for state, value, params, extra in rows:
        attrs = dict(extra)
        if state == TrialState.COMPLETE:
            attrs.update(config=f"{params['producers']} producers, batch {params['cpu_batch']}",
                         bottleneck="consumer", startup_s=1.5, images_per_s=value)
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=DISTS, user_attrs=attrs))
    return study


@pytest.fixture()
def crafted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    url = f"sqlite:///{tmp_path / 'crafted.db'}"
    name = f"{detect_machine().machine_id}.cpu.crafted"
    _crafted_study(url, name, CRAFTED)
    return url, name


def test_report_on_a_crafted_study(crafted: tuple[str, str], tmp_path: Path) -> None:
    url, name = crafted
    # A more recent study from another machine: the default is still this machine's.
    _crafted_study(url, "some-other-machine.cpu.x", CRAFTED[:2])
    data = study_report(storage=url, top=3)
    assert data["study"] == name and data["storage"] == url
    assert data["trials"] == {"complete": 5, "infeasible": 1, "pruned": 1, "fail": 1}
    assert data["trials_total"] == 8
    assert data["default_trial"] == 0 and data["default_images_per_s"] == 100.0
    assert data["best_trial"] == 1 and data["best_images_per_s"] == 150.0
    assert data["speedup_over_default"] == 1.5
    assert data["predicted_seconds_500k"] == pytest.approx(500_000 / 150, abs=0.1)
    top = data["top"]
    assert [r["trial"] for r in top] == [1, 3, 0]  # trial 7 repeats trial 1's parameters
    assert [r["images_per_s"] for r in top] == sorted((r["images_per_s"] for r in top), reverse=True)
    assert [r["gain_over_default"] for r in top] == [1.5, 1.2, 1.0]
    assert top[0]["config"] == "2 producers, batch 16" and top[0]["bottleneck"] == "consumer"
    assert top[0]["startup_s"] == 1.5 and top[0]["cpu_batch"] == 16 and top[0]["scheduling"] == "static"
    assert "plots" not in data

    other = study_report(study_name="some-other-machine.cpu.x", storage=url)
    assert other["study"] == "some-other-machine.cpu.x" and other["trials"] == {"complete": 2}


def test_top_configurations_fit_an_80_column_terminal(crafted: tuple[str, str]) -> None:
    """One block per configuration, every line within 80 columns, every field of every row shown."""
    url, _ = crafted
    rows = study_report(storage=url, top=3)["top"]
    wide = EngineConfig(producers=3, cpu_models=2, cpu_threads=4, cpu_batch=128, gpu_models=2, gpu_batch=512,
                        pin_cores=True)  # fmt: skip
    rows.append({**rows[0], "trial": 12, "gain_over_default": None, "config": wide.describe(),
                 "bottleneck": "producers (consumers waited 35% of their time for batches)",
                 **{k: v for k, v in wide.to_dict().items()}})  # fmt: skip
    text = top_text(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    blocks = text.split("\n\n")
    assert len(blocks) == len(rows) == 4
    for rank, (block, row) in enumerate(zip(blocks, rows, strict=True), 1):
        flat = " ".join(line.strip() for line in block.splitlines())
        assert flat.startswith(f"#{rank}  trial {row['trial']}: ")
        assert f"{row['images_per_s']:,.1f} images/s" in flat and f"start-up {row['startup_s']:,.1f} s" in flat
        gain = row["gain_over_default"]
        assert (f"x{gain:g} over the default" in flat) if gain is not None else ("over the default" not in flat)
        assert " ".join(f"config: {row['config']}".split()) in flat
        assert " ".join(f"bottleneck: {row['bottleneck']}".split()) in flat
        for key, value in row.items():
            if key not in ("trial", "images_per_s", "gain_over_default", "config", "bottleneck", "startup_s"):
                assert f"{key}={value}" in flat, key
    assert top_text(rows, width=60).count("\n") > text.count("\n")  # narrower terminals wrap more
    assert max(len(line) for line in top_text(rows, width=60).splitlines()) <= 60


def test_report_prefers_the_rechecked_pick(crafted: tuple[str, str]) -> None:
    url, name = crafted
    study = optuna.load_study(study_name=name, storage=url)
    study.set_user_attr("rechecks", {"1": [140.0, 141.0], "0": [98.0, 99.0]})
    study.set_user_attr("best", {"trial": 1, "images_per_s": 141.0, "spread": 0.07})
    data = study_report(storage=url)
    assert data["best_trial"] == 1 and data["best_images_per_s"] == 141.0
    assert data["default_images_per_s"] == 99.0  # median of the value and its re-measurements
    assert data["speedup_over_default"] == pytest.approx(141 / 99, abs=1e-3)


def test_plots_are_png_files(crafted: tuple[str, str], tmp_path: Path) -> None:
    url, _ = crafted
    data = study_report(storage=url, plots=tmp_path / "plots")
    names = sorted(Path(p).name for p in data["plots"])
    assert names == ["history.png", "images_per_s_vs_cpu_batch.png", "images_per_s_vs_producers.png",
                     "importances.png"]
    for p in data["plots"]:
        blob = Path(p).read_bytes()
        assert blob[:8] == PNG_MAGIC and len(blob) > 5000
    assert data["plots_skipped"] == {}


def test_plots_skip_importances_with_one_complete_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    _crafted_study(url, "lonely", CRAFTED[:1] + CRAFTED[2:3])
    data = study_report(storage=url, plots=tmp_path / "plots")
    assert "importances" in data["plots_skipped"]
    assert "history.png" in {Path(p).name for p in data["plots"]}
    assert data["speedup_over_default"] == 1.0


def test_missing_storage_or_study_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              crafted: tuple[str, str]) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no study found .*autotune study") as info:
        study_report()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "empty").exists()  # reading never creates a storage
    with pytest.raises(ConfigError, match="no study found"):
        study_report(storage=f"sqlite:///{tmp_path / 'nothing.db'}")
    url, _ = crafted
    with pytest.raises(ConfigError, match="'nope' not found"):
        study_report(study_name="nope", storage=url)


def test_report_on_a_real_study(tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  cpu_threads: {type: int, low: 1, high: 2}\n  cpu_batch: {type: categorical, choices: [4, 8]}\n"
        "fixed: {producers: 1, cpu_models: 1, gpu_models: 0}\ndefaults: {cpu_threads: 1, cpu_batch: 8}\n"
    )
    out = run_study(StudyOptions(space=str(space), trials=2, rounds=2, model="fake:32",
                                 dataset=str(small_dataset), validate_repeats=0, save=False, min_timed_images=0))
    data = study_report(plots=tmp_path / "plots")  # default storage and this machine's study
    assert data["study"] == out.study_name
    for key in ("study", "storage", "trials", "default_images_per_s", "best_images_per_s", "speedup_over_default",
                "predicted_seconds_500k", "top", "plots"):
        assert key in data, key
    assert data["trials"].get("complete", 0) >= 1
    assert data["default_images_per_s"] > 0 and data["best_images_per_s"] >= data["default_images_per_s"] * 0.5
    assert data["best_images_per_s"] == pytest.approx(out.images_per_s, rel=1e-3)
    rows = data["top"]
    assert rows and rows[0]["config"] and {"cpu_threads", "cpu_batch"} <= set(rows[0])
    assert [r["images_per_s"] for r in rows] == sorted((r["images_per_s"] for r in rows), reverse=True)
    assert any(Path(p).name == "history.png" for p in data["plots"])
    for p in data["plots"]:
        assert Path(p).read_bytes()[:8] == PNG_MAGIC
