"""Tuner truth: a default study's pick against a ground truth of full scans, and samplers replayed on it.

Ground truth: a full-factorial set of configurations of the real default CPU space (every backend that
passes the accuracy guard x replica/thread splits x batch sizes), each measured by the full retrieval path
(the engine scanning ``images`` images against a query, as `retrieve --rescan` does), ``repeats`` times,
interleaved, median. Then a default study runs (its own storage, in a temporary folder) and its pick is
measured the same way, interleaved with the ground truth's best. The table of measured configurations is
written as JSON so that `autotune bench samplers --grid FILE` can replay samplers on it.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.bench.common import env_restored
from autotune.data import Record, open_source
from autotune.defaults import default_dataset
from autotune.engine import embed_queries, run_scan
from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError
from autotune.machine import MachineInfo, detect_machine
from autotune.models import guard
from autotune.models.calibration import calibration_for
from autotune.progress import Log, ProgressFactory, quiet
from autotune.tuner import SearchSpace, StudyOptions, StudyOutcome, load_space, run_study
from autotune.tuner.replay import recommend, replay
from autotune.tuner.storage import load_study

# The knobs varied on top of the space's defaults: every pair of (replicas, threads) that fits 2 cores and the
# two batch sizes people pick first. Producers, scheduling and pinning stay at the space's defaults.
SPLITS = ((1, 1), (1, 2), (2, 1))
BATCHES = (16, 32)
GOAL_PICK_OVER_BEST = 0.95
GOAL_PREDICTION = (0.90, 1.10)


@contextmanager
def _scratch_studies() -> Iterator[Path]:
    """Point AUTOTUNE_STUDIES at a temporary folder: the bench never touches the user's profiles."""
    with tempfile.TemporaryDirectory(prefix="autotune-bench-tuner-") as tmp, env_restored("AUTOTUNE_STUDIES", tmp):
        yield Path(tmp)


def ground_truth_configs(
    space: SearchSpace,
    backends: list[str],
    splits: Sequence[tuple[int, int]] = SPLITS,
    batches: Sequence[int] = BATCHES,
) -> list[dict[str, Any]]:
    """Parameter sets of the ground truth: backends x (replicas, threads) x batch, on the space's defaults."""
    base = space.default_params()
    rows = []
    for backend, (models, threads), batch in itertools.product(backends, splits, batches):
        params = space.with_layout({**base, "cpu_backend": backend, "cpu_batch": batch}, models, threads)
        if space.admits(params):
            rows.append(params)
    return rows


class FullScan:
    """Measures configurations through the retrieval path: the engine over ``images`` images and a query."""

    def __init__(self, dataset: str, model: str, images: int, split: str | None, say: Log) -> None:
        """Open the dataset, take its first ``images`` records, and embed the query once."""
        self.source = open_source(dataset, split=split)
        self.records = self.source.records()[:images]
        if len(self.records) < images:
            raise ConfigError(f"the dataset has {len(self.records)} images; the bench needs {images}")
        self.model = model
        self.query = embed_queries(model, ["a photo of Felis catus"])
        self.say = say
        #: The last successful scan's top-k records for the query, best first.
        self.top: list[Record] = []

    def __call__(self, config: EngineConfig) -> float:
        """Scan images/s (start-up excluded, as retrieve reports it); 0 when the run fails."""
        try:
            res = run_scan(self.source, self.model, config, queries=self.query, records=self.records)
        except AutotuneError as exc:
            self.say(f"  full scan failed: {exc}")
            return 0.0
        by_id = {r.id: r for r in self.records}
        self.top = [by_id[int(i)] for i in res.topk_ids[0]]
        return res.images_per_s


def _interleaved(measure: Callable[[EngineConfig], float], configs: list[EngineConfig], repeats: int,
                 say: Log, label: str) -> list[list[float]]:  # fmt: skip
    """``repeats`` passes over every config in turn; runs per config."""
    runs: list[list[float]] = [[] for _ in configs]
    for r in range(repeats):
        for i, cfg in enumerate(configs):
            runs[i].append(measure(cfg))
            rate = runs[i][-1]
            say(f"{label} pass {r + 1}/{repeats}, {i + 1}/{len(configs)}: {rate:.1f} images/s  [{cfg.describe()}]")
    return runs


@dataclass(frozen=True)
class _Truth:
    """The ground truth: each measured configuration's parameters, median and runs, and the best one."""

    configs: list[EngineConfig]
    table: list[dict[str, Any]]
    best: int
    seconds: float


def bench_tuner(
    model: str = "synthetic:clip-vit-base-patch32",
    dataset: str | None = None,
    images: int = 1000,
    repeats: int = 3,
    trials: int = 30,
    progress: ProgressFactory | None = None,
    *,
    log: Log | None = None,
    split: str | None = None,
    space: str = "cpu",
    backends: list[str] | None = None,
    splits: Sequence[tuple[int, int]] = SPLITS,
    batches: Sequence[int] = BATCHES,
    study_options: dict[str, Any] | None = None,
    grid_out: Path | None = None,
    replay_seeds: int = 100,
) -> dict[str, Any]:
    """Ground truth by full scans, then a default study; the pick's share of the best and the prediction's truth.

    Returns plainly named figures: ``pick_over_best`` (goal >= 0.95), ``predicted_over_full_run`` (goal within
    0.90-1.10), ``trials_to_pick``, ``minutes_to_pick``, ``infeasible_share``, ``infeasible_by_scan_size``
    (goal 0), the ground-truth table and the sampler replay on it. ``progress`` reports the generation of
    the default corpus when ``dataset`` is None; ``log`` gets one line per measurement (None: silence).

    Example:
        >>> figures = bench_tuner(model="fake:32", images=64, repeats=1, trials=3)  # doctest: +SKIP
        >>> figures["pick_over_best"]  # doctest: +SKIP
        0.98
    """
    say = log or quiet
    t0 = time.perf_counter()
    data = str(dataset) if dataset else str(default_dataset(progress=progress))
    machine = detect_machine()
    named = space in ("cpu", "gpu", "cpu+gpu")
    sp = load_space(space, machine_facts=machine.facts(), device=space if named else None)
    with _scratch_studies():
        names = backends or _guarded_backends(sp, data, model, split, say)
        rows = ground_truth_configs(sp, names, splits, batches)
        if not rows:
            raise ConfigError("no configuration of the ground truth is feasible on this machine")
        scan = FullScan(data, model, images, split, say)
        truth = _ground_truth(scan, sp, rows, repeats, say)
        say(f"study: {trials} trials on the default space")
        t_study = time.perf_counter()
        opts = StudyOptions(
            device=sp.device, space=None if named else space, trials=trials,
            model=model, dataset=data, split=split, **(study_options or {}),
        )  # fmt: skip
        outcome = run_study(opts, log=(lambda m: say(f"study: {m}")) if log else None)
        study_s = time.perf_counter() - t_study
        figures = _study_figures(outcome)  # read while its storage (in the scratch folder) still exists
        final = _interleaved(scan, [outcome.config, truth.configs[truth.best]], repeats, say, "pick vs best")
    result = {
        "model": model,
        "dataset": data,
        "machine": machine.summary(),
        "images_per_scan": images,
        "repeats": repeats,
        "backends": names,
        **_pick_figures(truth, outcome, final, images),
        **figures,
        "ground_truth_seconds": round(truth.seconds, 1),
        "study_seconds": round(study_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "runs": {"pick": [round(v, 3) for v in final[0]], "best": [round(v, 3) for v in final[1]]},
        "ground_truth": truth.table,
    }
    result["goals_met"] = {
        "pick_over_best": result["pick_over_best"] >= GOAL_PICK_OVER_BEST,
        "predicted_over_full_run": GOAL_PREDICTION[0] <= result["predicted_over_full_run"] <= GOAL_PREDICTION[1],
        "no_infeasible_by_scan_size": result["infeasible_by_scan_size"] == 0,
    }
    result["samplers"] = _replay(truth.table, sp.default_params(), replay_seeds, trials, say)
    if grid_out is not None:
        _write_grid(grid_out, truth.table, sp, machine)
        result["grid_file"] = str(grid_out)
    return result


def _ground_truth(
    scan: FullScan, space: SearchSpace, rows: list[dict[str, Any]], repeats: int, say: Log
) -> _Truth:
    """Every ground-truth configuration scanned ``repeats`` times, interleaved; medians and the best."""
    configs = [space.to_config(p) for p in rows]
    images = len(scan.records)
    say(f"ground truth: {len(configs)} configurations x {repeats} full scans of {images} images")
    started = time.perf_counter()
    runs = _interleaved(scan, configs, repeats, say, "ground truth")
    seconds = time.perf_counter() - started
    table = [
        {**p, "images_per_s": round(statistics.median(r), 3), "runs": [round(v, 3) for v in r]}
        for p, r in zip(rows, runs, strict=True)
    ]
    best = max(range(len(table)), key=lambda i: table[i]["images_per_s"])
    return _Truth(configs, table, best, seconds)


def _pick_figures(truth: _Truth, outcome: StudyOutcome, final: list[list[float]], images: int) -> dict[str, Any]:
    """The pick against the ground truth's best, both scanned again side by side, and the profile's prediction."""
    pick, best = outcome.config, truth.configs[truth.best]
    pick_full, best_full = statistics.median(final[0]), statistics.median(final[1])
    predicted = outcome.predicted_images_per_s(images)
    return {
        "ground_truth_configs": len(truth.table),
        "ground_truth_best_config": best.describe(),
        "ground_truth_best_images_per_s": truth.table[truth.best]["images_per_s"],
        "pick_config": pick.describe(),
        "pick_in_ground_truth": any(pick.to_dict() == c.to_dict() for c in truth.configs),
        "pick_full_run_images_per_s": round(pick_full, 3),
        "best_full_run_images_per_s": round(best_full, 3),
        "pick_over_best": round(pick_full / best_full, 4) if best_full else 0.0,
        # The profile's prediction for a scan of this size: the validated steady rate plus the measured
        # warm-up and drain seconds (what the steady rate alone leaves out on 1,000 images, not on 500,000).
        "predicted_images_per_s": round(predicted, 3),
        "validated_images_per_s": round(outcome.images_per_s, 3),
        "overhead_s": round(outcome.overhead_s, 3),
        "trial_images_per_s": round(outcome.trial_images_per_s, 3),
        "predicted_over_full_run": round(predicted / pick_full, 4) if pick_full else 0.0,
    }


def _write_grid(path: Path, table: list[dict[str, Any]], space: SearchSpace, machine: MachineInfo) -> None:
    """The measured table as a grid file for `autotune bench samplers --grid`."""
    atomic_write_json(path, {"rows": table, "default": space.default_params(), "machine": machine.summary()})


def _guarded_backends(space: SearchSpace, dataset: str, model: str, split: str | None, say: Log) -> list[str]:
    """The space's backends that pass the accuracy guard on this model (fp32 eager always does)."""
    choices = next((list(p.choices) for p in space.params if p.name == "cpu_backend"), ["eager"])
    reference = None
    passed = []
    for name in choices:
        cfg = EngineConfig(cpu_backend=name)
        if not guard.non_reference_parts(cfg):
            passed.append(name)
            continue
        if reference is None:
            reference = guard.build_reference(open_source(dataset, split=split), model, sample=64)
        cal = calibration_for(open_source(dataset, split=split), model, name)
        ok = all(r.passed for r in guard.check_config(reference, model, cfg, guard.DEFAULT_THRESHOLD, cal))
        say(f"accuracy guard: {name} {'passed' if ok else 'failed: left out'}")
        if ok:
            passed.append(name)
    return passed


def _study_figures(outcome: StudyOutcome) -> dict[str, Any]:
    """Trials and minutes to the pick, and why trials were infeasible, read from the study's storage."""
    study = load_study(outcome.storage, outcome.study_name)
    trials = study.trials
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    by_size = [t for t in infeasible if any("--scan-size" in r for r in t.user_attrs["infeasible"])]
    start = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    best = trials[outcome.best_trial]
    minutes = (best.datetime_complete - start).total_seconds() / 60 if start and best.datetime_complete else None
    return {
        "study_trials": len(trials),
        "trials_to_pick": outcome.best_trial + 1,
        "minutes_to_pick": round(minutes, 2) if minutes is not None else None,
        "infeasible_share": round(len(infeasible) / len(trials), 3) if trials else 0.0,
        "infeasible_by_scan_size": len(by_size),
        "study_trial_states": dict(outcome.trials),
        # Every trial, so that a pick that misses the ground truth's best can be explained afterwards (the
        # study's storage lives in a scratch folder that is gone when the bench ends).
        "study_trials_table": [_trial_row(t) for t in trials],
        # The finalists the pick was chosen from, with their interleaved runs (see autotune.tuner.final).
        "study_final": study.user_attrs.get("final", []),
        "pick_is_layout_variant": best.user_attrs.get("final_variant_of") is not None,
    }


def _trial_row(trial: Any) -> dict[str, Any]:
    """One study trial as the bench reports it: state, configuration, value, and why it was cut short."""
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        "trial": trial.number,
        "state": "infeasible" if attrs.get("infeasible") else trial.state.name.lower(),
        "config": attrs.get("config"),
        "images_per_s": round(trial.value, 3) if trial.value is not None else None,
    }
    if attrs.get("infeasible"):
        row["reason"] = attrs["infeasible"][0]
    if trial.intermediate_values:
        row["round_images_per_s"] = [round(v, 2) for _, v in sorted(trial.intermediate_values.items())]
    for key in ("repeat_of", "final_variant_of"):
        if attrs.get(key) is not None:
            row[key] = attrs[key]
    return row


def _replay(
    table: list[dict[str, Any]], default: dict[str, Any], seeds: int, budget: int, say: Log
) -> dict[str, Any]:
    """Samplers replayed on the ground-truth table (trials to reach 95% / 99% of its best)."""
    rows = [{k: v for k, v in r.items() if k != "runs"} for r in table]
    say(f"replaying samplers on the {len(rows)}-point table, {seeds} seeds each")
    results = replay(rows, default=default, seeds=seeds, budget=budget)
    return {"results": results, "recommended": recommend(results)}

