"""Samplers compared, not assumed: replay each sampler on a table of measured configurations.

A grid benchmark measures every point of a small space once; replaying a sampler on that table costs no scans,
so many seeds can show how many trials each sampler needs to come near the grid's best, and how reliably.

How the replay models the study:

* Each parameter's values are the distinct values present in the table, sorted. Numeric parameters become an
  integer distribution over the *index* of their sorted values (so TPE and GP see the order, as they do for
  the real study's int ranges, and every proposal is a value that was measured; a log-spaced batch size
  becomes its log2 steps); other parameters (strings, booleans) become categoricals.
* Trial 0 is the default configuration when the table has it (the study enqueues it), for every sampler.
* A proposal that is in the table with a value is looked up. A row without a value, or a combination that is
  not in the table at all, is infeasible: the trial is pruned (``optuna.TrialPruned``, as the study marks
  infeasible proposals) and **counts as a trial spent**. That is conservative: in the study an infeasible
  proposal runs no scan, but it does use up the study's cap of ``5 x trials`` proposals. A proposal repeated
  from an earlier trial also counts (the study would measure it again).
* No pruner (nothing is measured shard by shard here), in-memory storage, Optuna's logging silenced.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.errors import ConfigError
from autotune.tuner.grid import VALUE_KEY, Grid, Point, all_points, load_grid_file, make_grid
from autotune.tuner.samplers import SAMPLERS, make_sampler

__all__ = [
    "CHECKPOINTS",
    "GP_SEEDS",
    "TARGETS",
    "VALUE_KEY",
    "Grid",
    "Step",
    "hill_climb",
    "load_grid_file",
    "make_grid",
    "recommend",
    "replay",
    "trace",
]

TARGETS = (95, 99)  # per cent of the grid's best value
CHECKPOINTS = (10, 20, 30)  # trial budgets at which the best-found fraction is reported
# GP refits its model every trial: about 1.6 s a seed of 30 trials on a ~50-point grid, against 0.15 s for TPE,
# so by default it gets this many seeds (its spread is wider, its median as telling).
GP_SEEDS = 10


# ---------------------------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class Step:
    """One hill-climb evaluation: the point, its value (None: infeasible) and the climb's centre at the time."""

    point: Point
    value: float | None
    # None for a start or a random restart; otherwise the point this one is a neighbour of.
    centre: Point | None


def hill_climb(grid: Grid, seed: int, budget: int) -> list[Step]:
    """Hill climb like Triton Model Analyzer's quick search, with random restarts, for ``budget`` evaluations.

    Starts at the default (a random point when the grid has none), evaluates every neighbour not yet seen (one
    parameter one step along its sorted values; in a seeded random order, so that a budget ending inside a
    neighbourhood is not always cut at the same one), moves to the best improving neighbour, and stops at a
    local optimum; then restarts at a random point not yet evaluated. Points already evaluated are remembered
    and cost nothing again; an infeasible point costs one evaluation like any other.

    Example:
        >>> steps = hill_climb(make_grid(rows, default), seed=0, budget=30)
        >>> max(s.value or 0 for s in steps)
    """
    rng = random.Random(seed)
    seen: dict[Point, float | None] = {}
    steps: list[Step] = []

    def evaluate(point: Point, centre: Point | None) -> float | None:
        """Spend one evaluation."""
        value = grid.value(point)
        seen[point] = value
        steps.append(Step(point, value, centre))
        return value

    start = grid.default
    while len(steps) < budget:
        if start is None:
            start = _fresh_point(grid, seen, rng)
            if start is None:  # every point evaluated
                break
        centre, best = start, evaluate(start, None)
        start = None
        if best is None:
            continue  # an infeasible start: restart elsewhere
        while len(steps) < budget:
            todo = [n for n in grid.neighbours(centre) if n not in seen]
            rng.shuffle(todo)
            for n in todo[: budget - len(steps)]:
                evaluate(n, centre)
            scored = [(v, n) for n in grid.neighbours(centre) if (v := seen.get(n)) is not None]
            if not scored:
                break
            value, nxt = max(scored, key=lambda s: s[0])
            if value <= best:
                break  # a local optimum
            centre, best = nxt, value
    return steps


def _fresh_point(grid: Grid, seen: Mapping[Point, Any], rng: random.Random) -> Point | None:
    """A uniformly random point not yet evaluated (None when there is none)."""
    # Rejection sampling is cheap while most of the space is unseen; the full list only near the end.
    for _ in range(64):
        point = tuple(rng.randrange(len(v)) for v in grid.values)
        if point not in seen:
            return point
    left = [p for p in all_points(grid) if p not in seen]
    return rng.choice(left) if left else None


def _optuna_trace(grid: Grid, name: str, seed: int, budget: int) -> list[Point]:
    """The points an Optuna sampler proposes in ``budget`` trials of a study restricted to the grid."""
    import optuna

    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(name, seed, budget), pruner=optuna.pruners.NopPruner()
    )
    if grid.default is not None:
        study.enqueue_trial(dict(zip(grid.names, grid.default, strict=True)))
    points: list[Point] = []

    def objective(trial: Any) -> float:
        """Look the proposal up; infeasible ones are pruned, as the study does."""
        point = tuple(
            trial.suggest_int(n, 0, len(vals) - 1)
            if grid.ordinal(k)
            else trial.suggest_categorical(n, list(range(len(vals))))
            for k, (n, vals) in enumerate(zip(grid.names, grid.values, strict=True))
        )
        points.append(point)
        value = grid.value(point)
        if value is None:
            trial.set_user_attr("infeasible", True)
            raise optuna.TrialPruned("infeasible")
        return value

    study.optimize(objective, n_trials=budget, gc_after_trial=False)
    return points


def trace(grid: Grid, sampler: str, seed: int, budget: int) -> list[Point]:
    """The points one sampler evaluates, trial by trial, for one seed (deterministic given the seed).

    Example:
        >>> pts = trace(make_grid(rows, default), "tpe", seed=3, budget=30)
        >>> [grid.value(p) for p in pts]
    """
    if sampler == "hill":
        return [s.point for s in hill_climb(grid, seed, budget)]
    return _optuna_trace(grid, sampler, seed, budget)


# ----------------------------------------------------------------------------------------------- figures


def _quantile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile; None when it falls on a seed that never got there (an infinite count)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(s[hi]):
        return None
    return round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 2)


def _summarise(grid: Grid, traces: Sequence[Sequence[Point]], budget: int) -> dict[str, Any]:
    """Per-sampler figures over seeds from each seed's evaluated points."""
    best = grid.best
    checkpoints = sorted({c for c in CHECKPOINTS if c <= budget} | {budget})
    to: dict[int, list[float]] = {t: [] for t in TARGETS}
    at: dict[int, list[float]] = {c: [] for c in checkpoints}
    infeasible, repeated = [], []
    for points in traces:
        curve, top = [], 0.0
        for p in points:
            top = max(top, grid.value(p) or 0.0)
            curve.append(top / best)
        for t in TARGETS:
            # The tiny slack keeps 0.95 * best from missing a value equal to it by rounding.
            hit = next((i + 1 for i, f in enumerate(curve) if f >= t / 100 - 1e-12), None)
            to[t].append(float(hit) if hit is not None else math.inf)
        for c in checkpoints:
            at[c].append(curve[min(c, len(curve)) - 1] if curve else 0.0)
        n = max(1, len(points))
        infeasible.append(sum(grid.value(p) is None for p in points) / n)
        repeated.append((len(points) - len(set(points))) / n)
    out: dict[str, Any] = {}
    for t in TARGETS:
        out[f"trials_to_{t}_median"] = _quantile(to[t], 0.5)
        out[f"trials_to_{t}_p25"] = _quantile(to[t], 0.25)
        out[f"trials_to_{t}_p75"] = _quantile(to[t], 0.75)
        out[f"reached_{t}_share"] = round(sum(not math.isinf(x) for x in to[t]) / len(traces), 3)
    for c in checkpoints:
        out[f"best_fraction_at_{c}_median"] = round(statistics.median(at[c]), 4)
    out["infeasible_trials_share"] = round(statistics.fmean(infeasible), 3)
    out["repeated_trials_share"] = round(statistics.fmean(repeated), 3)
    return out


def replay(
    rows: Sequence[Mapping[str, Any]] | Grid,
    default: Mapping[str, Any] | None = None,
    *,
    samplers: Sequence[str] = SAMPLERS,
    seeds: int = 100,
    budget: int = 30,
    seeds_for: Mapping[str, int] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay each sampler on a measured grid for seeds ``0..seeds-1`` with ``budget`` trials each.

    Per sampler: trials to reach 95% and 99% of the grid's best (median, 25th and 75th percentile over seeds;
    a seed that never gets there counts as infinitely many trials, so a figure is null when it falls on such
    a seed), the share of seeds that got there within the budget, the median best-found fraction of the
    grid's best after 10, 20 and 30 trials (and the budget), and the mean share of trials spent on infeasible
    and on repeated proposals. ``seeds_for`` gives a sampler fewer (or more) seeds than ``seeds`` (default:
    GP gets ``min(seeds, GP_SEEDS)``, being ten times slower). Deterministic given the seeds.

    Example:
        >>> result = replay(rows, default, seeds=100, budget=30)
        >>> result["samplers"]["tpe"]["trials_to_95_median"], recommend(result)
    """
    import optuna

    grid = rows if isinstance(rows, Grid) else make_grid(rows, default)
    for name in samplers:
        if name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    if seeds < 1 or budget < 1:
        raise ConfigError(f"seeds and budget must be at least 1, got {seeds} and {budget}")
    say = log or (lambda _m: None)
    best_point = max((p for p, v in grid.table.items() if v is not None), key=lambda p: grid.table[p] or 0.0)
    default_value = grid.value(grid.default) if grid.default is not None else None
    result: dict[str, Any] = {
        "grid_rows": len(grid.table),
        "feasible_rows": sum(v is not None for v in grid.table.values()),
        "space_points": grid.size,
        "best_images_per_s": grid.best,
        "best_params": grid.params(best_point),
        "default_in_grid": grid.default is not None,
        "default_fraction_of_best": round(default_value / grid.best, 4) if default_value is not None else None,
        "seeds": seeds,
        "budget": budget,
        "samplers": {},
    }
    counts = {"gp": min(seeds, GP_SEEDS)} if seeds_for is None else seeds_for
    # Our figures replace Optuna's per-trial log lines (thousands of them); restore the caller's level after.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    threads = _one_torch_thread() if "gp" in samplers else None
    try:
        for name in samplers:
            n = counts.get(name, seeds)
            t0 = time.perf_counter()
            traces = [trace(grid, name, seed, budget) for seed in range(n)]
            seconds = time.perf_counter() - t0
            result["samplers"][name] = {**_summarise(grid, traces, budget), "seeds": n, "seconds": round(seconds, 2)}
            say(f"{name}: {n} seeds x {budget} trials in {seconds:.1f} s")
    finally:
        optuna.logging.set_verbosity(verbosity)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    return result


def _one_torch_thread() -> int:
    """Run torch on one thread (returning the caller's count to restore after)."""
    import torch

    # GP's tensors are tiny: handing each op to a second thread cost more than it saved (3x slower on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def recommend(results: Mapping[str, Any]) -> str:
    """The sampler to use: lowest median trials to 95% of the grid's best.

    Ties (and samplers that never get there: null counts as infinite) go to the lower median trials to 99%,
    then to the higher share of seeds that reached 95%, then to the order of ``SAMPLERS`` (tpe first: the
    study's sampler today wins when nothing separates them).

    Example:
        >>> recommend(replay(rows, default, seeds=100))
        'tpe'
    """
    figures = results["samplers"]
    if not figures:
        raise ConfigError("no sampler was replayed: nothing to recommend")

    def key(name: str) -> tuple[float, float, float, int]:
        """Sort key: fewer trials to 95%, then to 99%, then more seeds that got there."""
        f = figures[name]
        inf = math.inf
        return (
            inf if f["trials_to_95_median"] is None else f["trials_to_95_median"],
            inf if f["trials_to_99_median"] is None else f["trials_to_99_median"],
            -f["reached_95_share"],
            SAMPLERS.index(name) if name in SAMPLERS else len(SAMPLERS),
        )

    return min(figures, key=key)
