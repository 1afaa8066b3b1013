"""`autotune bench tuner`: the exhaustive grid against the study, on the fake backend and a tiny space."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.bench.tuner import BENCH_SPACE, bench_tuner
from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.space import load_space

# Three feasible points of four: the constraint drops (2 threads, batch 8).
TINY_SPACE = """\
name: tiny
device: cpu
params:
  cpu_threads: {type: int, low: 1, high: 2}
  cpu_batch:   {type: categorical, choices: [4, 8]}
fixed:
  producers: 1
  cpu_models: 1
  gpu_models: 0
constraints:
  - "cpu_threads * cpu_batch <= 8"
defaults:
  cpu_threads: 1
  cpu_batch: 8
"""


def test_default_bench_space_is_small_and_feasible(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(BENCH_SPACE)
    for cores, points in ((1, 2), (2, 6), (16, 8)):
        space = load_space(path, machine_facts={"cores": cores, "gpus": 0})
        assert len(space.grid()) == points
        assert not space.violations(space.default_params())


@pytest.mark.slow
def test_bench_tuner_on_the_fake_backend(
    tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    res = bench_tuner(model="fake:32", dataset=str(small_dataset), scan_size=16, trials=2, progress=False,
                      warmup=8, shards=2, space_yaml=TINY_SPACE, rechecks=1)
    for key in ("grid_best_images_per_s", "grid_best_config", "grid_points", "grid_seconds",
                "study_best_images_per_s", "study_config", "study_trials", "study_infeasible", "study_seconds",
                "ratio", "total_seconds"):
        assert key in res, key
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    feasible = load_space(path, machine_facts=detect_machine().facts()).grid()
    assert res["grid_points"] == len(feasible) == 3
    assert len(res["grid"]) == 3 and all(row["images_per_s"] > 0 for row in res["grid"])
    assert res["grid_best_images_per_s"] > 0 and res["study_best_images_per_s"] > 0
    assert res["ratio"] > 0
    assert res["study_trials"] >= 1
    assert res["total_seconds"] >= res["grid_seconds"] + res["study_seconds"] - 0.2
    assert not (tmp_path / "studies").exists()  # the bench keeps its study in a temporary folder


def test_scan_too_short_for_the_space_is_refused(small_dataset: Path) -> None:
    # The default space runs 2 replicas x batch 8 on 2+ cores: shards of 8 images cannot time a round of batches.
    if detect_machine().facts()["cores"] < 2:
        pytest.skip("one core: the default bench space has a single replica")
    with pytest.raises(ConfigError, match="--scan-size 32") as info:
        bench_tuner(model="fake:32", dataset=str(small_dataset), scan_size=16, trials=1, progress=False, warmup=16,
                    shards=2)
    assert "\n" not in str(info.value)
