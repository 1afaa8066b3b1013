"""Samplers replayed on measured tables: figures, determinism, the hill climb's moves, the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from grid_tables import DEFAULT, OPTIMUM, synthetic_rows

from autotune.cli import main
from autotune.errors import ConfigError
from autotune.tuner.replay import hill_climb, load_grid_file, make_grid, recommend, replay, trace
from autotune.tuner.samplers import SAMPLERS, make_sampler


def test_every_sampler_finds_the_optimum_given_a_large_budget() -> None:
    rows = synthetic_rows()
    budgets = {"tpe": 60, "random": 300, "hill": 100}
    for name, budget in budgets.items():
        res = replay(rows, DEFAULT, samplers=[name], seeds=3, budget=budget)
        assert res["samplers"][name]["reached_99_share"] == 1.0, name
    # GP only sees completed trials: on a table with infeasible points it can keep proposing the same pruned
    # one (the replay shows it), so it is checked on a table where every point was measured.
    res = replay(synthetic_rows(infeasible=False), DEFAULT, samplers=["gp"], seeds=2, budget=20)
    assert res["samplers"]["gp"]["reached_99_share"] == 1.0
    assert res["best_params"] == OPTIMUM


def test_one_trial_when_the_default_is_the_best() -> None:
    res = replay(synthetic_rows(), OPTIMUM, seeds=2, budget=5, seeds_for={"gp": 2})
    assert res["default_fraction_of_best"] == 1.0
    for name in SAMPLERS:
        f = res["samplers"][name]
        assert (f["trials_to_95_median"], f["trials_to_95_p25"], f["trials_to_95_p75"]) == (1, 1, 1), name
        assert f["reached_95_share"] == 1.0 and f["best_fraction_at_5_median"] == 1.0


def test_a_target_never_reached_is_null_not_a_number() -> None:
    res = replay(synthetic_rows(), DEFAULT, samplers=["hill", "random"], seeds=4, budget=1)
    for f in res["samplers"].values():
        assert f["trials_to_95_median"] is None and f["reached_95_share"] == 0.0
        assert f["best_fraction_at_1_median"] == pytest.approx(68 / 110, abs=1e-4)  # the default's value


def test_results_are_deterministic_for_a_seed() -> None:
    rows = synthetic_rows()
    kwargs: dict[str, Any] = {"samplers": ["tpe", "random", "hill"], "seeds": 3, "budget": 15}
    first, second = replay(rows, DEFAULT, **kwargs), replay(rows, DEFAULT, **kwargs)
    for res in (first, second):
        for f in res["samplers"].values():
            f.pop("seconds")
    assert first == second
    grid = make_grid(rows, DEFAULT)
    assert trace(grid, "gp", 1, 12) == trace(grid, "gp", 1, 12)
    assert trace(grid, "random", 1, 12) != trace(grid, "random", 2, 12)
    # Trial 0 is the default for every sampler, as the study enqueues it.
    assert all(trace(grid, name, 5, 3)[0] == grid.default for name in SAMPLERS)


def test_hill_climb_moves_only_to_improving_neighbours() -> None:
    grid = make_grid(synthetic_rows(), DEFAULT)
    for seed in range(5):
        steps = hill_climb(grid, seed, budget=500)
        points = [s.point for s in steps]
        assert len(points) == len(set(points)) == grid.size  # each point once, then it stops
        assert steps[0].point == grid.default and steps[0].centre is None
        assert sum(s.centre is None for s in steps) > 1  # it restarted
        centre = None
        for i, s in enumerate(steps):
            if s.centre is None:
                centre = s.point
                continue
            assert s.centre in grid.neighbours(s.point)  # one parameter, one step
            if s.centre != centre:  # it moved: along improving neighbours already evaluated
                assert _climbs(grid, centre, s.centre, {t.point for t in steps[:i]})
                centre = s.centre


def _climbs(grid: Any, start: Any, end: Any, evaluated: set[Any]) -> bool:
    """Whether ``end`` is reached from ``start`` by moves to better, evaluated neighbours."""
    todo, done = [start], set()
    while todo:
        p = todo.pop()
        if p == end:
            return True
        done.add(p)
        here = grid.value(p)
        todo += [
            n
            for n in grid.neighbours(p)
            if n in evaluated and n not in done and (v := grid.value(n)) is not None and here is not None and v > here
        ]
    return False


def test_recommend_by_trials_to_95_then_99() -> None:
    def figures(to95: float | None, to99: float | None, share: float = 1.0) -> dict[str, Any]:
        return {"trials_to_95_median": to95, "trials_to_99_median": to99, "reached_95_share": share}

    assert recommend({"samplers": {"tpe": figures(8, 20), "hill": figures(6, None)}}) == "hill"
    assert recommend({"samplers": {"tpe": figures(8, 20), "gp": figures(8, 12)}}) == "gp"
    assert recommend({"samplers": {"random": figures(None, None), "gp": figures(29, None, 0.5)}}) == "gp"
    assert recommend({"samplers": {"hill": figures(5, 5), "tpe": figures(5, 5)}}) == "tpe"


def test_make_sampler() -> None:
    import optuna

    assert isinstance(make_sampler("tpe", 0, 30), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("gp", 0, 30), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("random", 0, 30), optuna.samplers.RandomSampler)
    for name in ("hill", "cmaes"):
        with pytest.raises(ConfigError):
            make_sampler(name, 0, 30)


def test_cli_replays_a_grid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"rows": synthetic_rows(), "default": DEFAULT, "machine": "test"}))
    assert load_grid_file(path)[1] == DEFAULT
    argv = ["bench", "samplers", "--grid", str(path), "--seeds", "3", "--gp-seeds", "2", "--budget", "10"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommended"] in SAMPLERS and out["samplers"]["gp"]["seeds"] == 2
    assert out["samplers"]["tpe"]["seeds"] == 3 and out["grid_rows"] == 44
    assert main([*argv, "--gp-seeds", "1"]) == 0
    assert "recommended" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "grid file not found"),
        ("{not json", "not valid JSON at line 1"),
        ('{"points": []}', "expected a list of rows"),
        ('{"rows": [{"a": 1, "images_per_s": 1}], "default": [1]}', "'default' must be an object"),
        ('[{"a": 1, "images_per_s": -3}]', "finite number >= 0"),
    ],
)
def test_cli_bad_file_is_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "grid.json"
    if content is not None:
        path.write_text(content)
    assert main(["bench", "samplers", "--grid", str(path), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
