"""`autotune bench tuner`: ground truth by full scans, a default study, the pick measured the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.bench.tuner import bench_tuner, ground_truth_configs
from autotune.tuner.space import load_space


def test_ground_truth_is_a_full_factorial_of_feasible_points() -> None:
    """Backends x (replicas, threads) x batch on the default space, constraint-filtered, defaults elsewhere."""
    space = load_space("cpu", machine_facts={"cores": 2, "gpus": 0}, device="cpu")
    rows = ground_truth_configs(space, ["eager", "onnx-int8"])
    assert len(rows) == 2 * 3 * 2
    assert {r["cpu_layout"] for r in rows} == {"1x1", "1x2", "2x1"}
    assert all(r["producers"] == space.default_params()["producers"] for r in rows)
    one_core = load_space("cpu", machine_facts={"cores": 1, "gpus": 0}, device="cpu")
    assert {r["cpu_layout"] for r in ground_truth_configs(one_core, ["eager"])} == {"1x1"}


@pytest.mark.slow
def test_bench_tuner_on_the_fake_backend(tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    res = bench_tuner(
        model="fake:32", dataset=str(small_dataset), images=32, repeats=1, trials=2,
        backends=["eager"], batches=(8,), study_options={
            "validate_repeats": 1, "validate_rounds": 2, "rounds": 2, "min_timed_images": 0, "final_repeats": 1,
        },
        grid_out=tmp_path / "grid.json", replay_seeds=3,
    )  # fmt: skip
    for key in ("pick_over_best", "predicted_over_full_run", "trials_to_pick", "minutes_to_pick",
                "infeasible_share", "infeasible_by_scan_size", "ground_truth", "goals_met", "samplers"):  # fmt: skip
        assert key in res, key
    assert res["ground_truth_configs"] == len(res["ground_truth"]) >= 1
    assert res["pick_over_best"] > 0 and res["predicted_over_full_run"] > 0
    assert res["infeasible_by_scan_size"] == 0
    table = res["study_trials_table"]  # every trial kept, so a missed pick can be explained afterwards
    assert len(table) == res["study_trials"] and table[0]["trial"] == 0 and table[0]["config"]
    assert {r["state"] for r in table} <= {"complete", "pruned", "infeasible", "fail"}
    assert all(len(f["runs"]) == 1 for f in res["study_final"])  # the finalists the pick was chosen from
    assert json.loads((tmp_path / "grid.json").read_text())["rows"]
    assert not (tmp_path / "studies").exists()  # the bench keeps its study in a temporary folder


def test_layout_option_parses_replicas_by_threads() -> None:
    """`--layout 2x1` is two replicas of one thread; anything else is a one-line usage error."""
    from autotune.cli.bench import _layout
    from autotune.errors import ConfigError

    assert _layout("2x1") == (2, 1) and _layout("1X2") == (1, 2)
    for bad in ("2by1", "0x2", "2x", "x1"):
        with pytest.raises(ConfigError, match="expected replicas x threads"):
            _layout(bad)


def test_bench_configs_compares_full_scans_side_by_side(small_dataset: Path) -> None:
    """Every configuration gets one run per pass; the best median has share 1 and the others theirs."""
    from typer.testing import CliRunner

    from autotune.cli import app

    out = CliRunner().invoke(
        app, ["bench", "configs", "--model", "fake:32", "--dataset", str(small_dataset), "--images", "16",
              "--repeats", "1", "--json", "--config", '{"cpu_models": 1, "cpu_batch": 8}',
              "--config", '{"cpu_models": 1, "cpu_batch": 4, "producers": 1}']
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    rows = res["rows"]
    assert [len(r["runs"]) for r in rows] == [1, 1] and [r["settings"]["cpu_batch"] for r in rows] == [8, 4]
    # Each run is reported on stderr as it ends, --json or not: a run cut off still leaves what it measured.
    assert sum(line.startswith("pass 1/1: ") for line in out.stderr.splitlines()) == 2
    assert max(r["share_of_best"] for r in rows) == 1.0
    best = max(rows, key=lambda r: r["images_per_s"])
    assert res["best"] == best["config"]
    assert all(r["share_of_best"] == pytest.approx(r["images_per_s"] / best["images_per_s"], abs=2e-3) for r in rows)
