"""Tuner quality: an exhaustive grid of a small space against the Optuna study on the same space, in one run."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A small CPU space: 6 feasible points on 2 cores (8 on 4 or more), so a grid is affordable. Batch sizes stay
# small so that a 48-image scan still times whole rounds of batches on every replica (see _check_scan).
BENCH_SPACE = """\
name: bench-small
description: A small CPU space for comparing the study with an exhaustive grid.
device: cpu
params:
  producers:   {type: int, low: 1, high: 1}
  cpu_models:  {type: int, low: 1, high: "min(2, cores)"}
  cpu_threads: {type: int, low: 1, high: "min(2, cores)"}
  cpu_batch:   {type: categorical, choices: [4, 8]}
  scheduling:  {type: categorical, choices: [dynamic]}
fixed:
  gpu_models: 0
  queue_depth: 2
constraints:
  - "cpu_models * cpu_threads <= cores"
defaults:
  producers: 1
  cpu_models: 1
  cpu_threads: "min(2, cores)"
  cpu_batch: 8
  scheduling: dynamic
"""

RECHECKS = 2  # interleaved re-measurements of the grid's best and the study's pick


def _check_scan(space: Any, scan_size: int, warmup: int, shards: int) -> None:
    """Refuse a scan too short to time every grid point: a shard must hold a whole round of batches.

    Throughput is timed between batch completions; with several replicas finishing batches side by side, a
    shard shorter than one batch per replica would time two batches that ran in parallel as if one followed
    the other (absurd images/s).
    """
    from autotune.errors import ConfigError

    need = max(cfg.unit_batch() * max(cfg.cpu_models, 1) for cfg in (space.to_config(p) for p in space.grid()))
    shard = max(1, scan_size // shards)
    if shard < need or warmup < need:
        raise ConfigError(
            f"scan too short for this space: shards of {shard} images and a warm-up of {warmup} must each hold "
            f"{need} images (one batch per replica); use --scan-size {need * shards} or more"
        )


def _logger(progress: bool) -> Callable[[str], None]:
    """Progress lines on stderr via rich, or nothing."""
    if not progress:
        return lambda _m: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda m: console.print(f"[dim]{m}[/dim]")


def bench_tuner(
    model: str = "synthetic:clip-vit-base-patch32",
    dataset: str | None = None,
    scan_size: int = 48,
    trials: int = 8,
    progress: bool = True,
    *,
    warmup: int = 16,
    shards: int = 3,
    trial_timeout_s: float = 600.0,
    space_yaml: str = BENCH_SPACE,
    rechecks: int = RECHECKS,
    split: str | None = None,
) -> dict[str, Any]:
    """Measure every feasible point of a small space, run the study on the same space, and compare.

    The grid's best configuration and the study's pick are then re-measured, interleaved, ``rechecks`` times
    each, and compared by median (``ratio`` = study / grid; the goal is >= 0.97). When the study picks the
    grid's best configuration itself, the ratio is 1.0 by definition (both medians are then pooled).

    Example:
        >>> figures = bench_tuner(model="fake:32", scan_size=16, trials=3, progress=False)  # doctest: +SKIP
        >>> figures["ratio"], figures["grid_points"], figures["study_trials"]
    """
    from autotune.data import open_source
    from autotune.defaults import default_dataset
    from autotune.engine.config import EngineConfig
    from autotune.errors import ConfigError
    from autotune.machine import detect_machine
    from autotune.tuner.objective import ScanSpec, TrialFailed, measure
    from autotune.tuner.space import load_space
    from autotune.tuner.study import StudyOptions, run_study

    say = _logger(progress)
    t0 = time.perf_counter()
    data = str(dataset) if dataset else str(default_dataset(progress=progress))
    machine = detect_machine()
    spec = ScanSpec(dataset=data, model=model, scan_size=scan_size, warmup=warmup, shards=shards,
                    timeout_s=trial_timeout_s, split=split)

    def rate(config: EngineConfig) -> float:
        try:
            return measure(config, spec).images_per_s
        except TrialFailed as exc:
            say(f"  measurement failed: {exc}")
            return 0.0

    with tempfile.TemporaryDirectory(prefix="autotune-bench-tuner-") as tmp:
        space_file = Path(tmp) / "bench-small.yaml"
        space_file.write_text(space_yaml)
        space = load_space(space_file, machine_facts=machine.facts())
        grid = space.grid()
        if not grid:
            raise ConfigError("the bench space has no feasible point on this machine")
        _check_scan(space, scan_size, warmup, shards)
        n_images = len(open_source(data, split=split))
        if n_images < warmup + scan_size:
            raise ConfigError(f"the dataset has {n_images} images; the bench needs warm-up + scan size = "
                              f"{warmup + scan_size}")

        # (1) The exhaustive grid: every feasible point, measured once.
        say(f"grid: {len(grid)} feasible points on {machine.summary()}")
        t_grid = time.perf_counter()
        grid_rows: list[dict[str, Any]] = []
        for i, params in enumerate(grid):
            cfg = space.to_config(params)
            value = rate(cfg)
            grid_rows.append({"config": cfg.describe(), "images_per_s": round(value, 3), "params": params})
            say(f"grid {i + 1}/{len(grid)}: {value:.2f} images/s  [{cfg.describe()}]")
        grid_seconds = time.perf_counter() - t_grid
        best_row = max(grid_rows, key=lambda r: r["images_per_s"])
        grid_best = space.to_config(best_row["params"])

        # (2) The study on the same space and the same fixed scan.
        t_study = time.perf_counter()
        outcome = run_study(
            StudyOptions(space=str(space_file), trials=trials, scan_size=scan_size, warmup=warmup, shards=shards,
                         model=model, dataset=data, storage=f"sqlite:///{tmp}/bench.db", repeats=1, save=False,
                         trial_timeout_s=trial_timeout_s, split=split),
            log=(lambda m: say(f"study: {m}")) if progress else None,
        )
        study_seconds = time.perf_counter() - t_study
        study_pick = outcome.config

    # (3) A fair comparison under noise: re-measure both, interleaved, and compare medians.
    same = study_pick.to_dict() == grid_best.to_dict()
    grid_values: list[float] = []
    study_values: list[float] = []
    for r in range(max(1, rechecks)):
        grid_values.append(rate(grid_best))
        say(f"re-measure {r + 1}/{rechecks}: grid best {grid_values[-1]:.2f} images/s")
        study_values.append(rate(study_pick))
        say(f"re-measure {r + 1}/{rechecks}: study pick {study_values[-1]:.2f} images/s")
    if same:
        grid_values = study_values = grid_values + study_values
    grid_med = statistics.median(grid_values)
    study_med = statistics.median(study_values)
    ratio = 1.0 if same else (study_med / grid_med if grid_med > 0 else 0.0)
    states = dict(outcome.trials)
    infeasible = states.get("infeasible", 0)
    runs = sum(v for k, v in states.items() if k != "infeasible")
    return {
        "model": model,
        "dataset": data,
        "machine": machine.summary(),
        "scan_size": scan_size,
        "grid_points": len(grid),
        "grid_best_images_per_s": round(grid_med, 3),
        "grid_best_config": grid_best.describe(),
        "grid_best_first_pass_images_per_s": best_row["images_per_s"],
        "grid_seconds": round(grid_seconds, 1),
        "study_best_images_per_s": round(study_med, 3),
        "study_config": study_pick.describe(),
        "study_reported_images_per_s": round(outcome.images_per_s, 3),
        "study_trials": runs,
        "study_infeasible": infeasible,
        "study_trial_states": states,
        "study_seconds": round(study_seconds, 1),
        "same_config": same,
        "ratio": round(ratio, 4),
        "goal_met": ratio >= 0.97,
        "rechecks": {"grid_best": [round(v, 3) for v in grid_values],
                     "study_pick": [round(v, 3) for v in study_values]},
        "grid": [{"config": r["config"], "images_per_s": r["images_per_s"]} for r in grid_rows],
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
