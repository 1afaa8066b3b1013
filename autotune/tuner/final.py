"""The study's final: diverse finalists scanned again side by side, interleaved, to choose the pick.

Trials run minutes apart, and a shared machine's speed drifts within minutes (by up to 3x on the 2-core
development VM): a trial measured in a fast minute beats a better configuration measured in a slow one, and
a sampler spends most of its trials near whatever looked best early. So the final does not trust the trial
ranking beyond choosing *which kinds* of configuration to compare:

- the best trial of each of the best ``top`` kinds (backend and replica layout), so that three batch-size
  neighbours of one kind cannot crowd out a different backend or layout;
- their untried replica-layout neighbours (twice the models with half the threads, and the reverse, or one
  dimension doubled where cores are left), the one step a sampler misses most: models x threads is a coupled
  constraint, so a random or TPE proposal rarely lands on an untried layout of a good backend (the 2-core
  ground truth's best, bf16 2 x 1, was never proposed by a 30-trial TPE study that found bf16 1 x 2).

Each finalist is scanned ``repeats`` times, interleaved, on images the trials did not use; the fastest median
is the pick. Layout neighbours are recorded in the study as trials of their own (``final_variant_of``), so a
resumed study and `autotune report` see them. This pass only chooses: the validation that follows measures
the pick afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.progress import Log
from autotune.tuner.options import StudySetup
from autotune.tuner.storage import distinct_top, trial_value
from autotune.tuner.validation import Candidate, validate

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from autotune.tuner.objective import ScanSpec

# The parameters that make a configuration's *kind*; the rest (batch, producers, scheduling) are tuned within it.
KIND_KEYS = ("cpu_backend", "gpu_backend", "cpu_models", "cpu_threads", "gpu_models")


@dataclass
class Finalist:
    """One configuration in the final: its parameters, the trial it came from, and why it is there."""

    params: dict[str, Any]
    trial: FrozenTrial | None  # None: a layout neighbour no trial measured
    why: str  # "best of its kind" | "layout of trial N"
    variant_of: int | None = None  # the trial a layout neighbour was derived from


def kind(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The kind of a configuration: its backends and replica layout."""
    return tuple((k, params[k]) for k in KIND_KEYS if k in params)


def best_of_each_kind(trials: list[FrozenTrial], top: int) -> list[FrozenTrial]:
    """The best complete trial of each kind, best first, ``top`` kinds at most."""
    return distinct_top(trials, top, key=kind)


def layout_neighbours(setup: StudySetup, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``params`` with each feasible neighbouring CPU layout: models x2 / threads /2, the reverse, or one doubled."""
    space = setup.space
    names = {p.name: p for p in space.params}
    if "cpu_models" not in names or "cpu_threads" not in names:
        return []
    m, t = int(params["cpu_models"]), int(params["cpu_threads"])
    steps = [(m * 2, t / 2), (m / 2, t * 2), (m * 2, t), (m, t * 2)]
    out: list[dict[str, Any]] = []
    for nm, nt in steps:
        if nm != int(nm) or nt != int(nt) or (int(nm), int(nt)) == (m, t):
            continue
        cand = {**params, "cpu_models": int(nm), "cpu_threads": int(nt)}
        if any(c["cpu_models"] == cand["cpu_models"] and c["cpu_threads"] == cand["cpu_threads"] for c in out):
            continue
        if all(_within(names[k], cand[k]) for k in ("cpu_models", "cpu_threads")) and _feasible(setup, cand):
            out.append(cand)
    return out


def _within(param: Any, value: int) -> bool:
    """Whether an int parameter's bounds hold ``value``."""
    return bool(param.type != "int" or param.low <= value <= param.high)


def _feasible(setup: StudySetup, params: dict[str, Any]) -> bool:
    """Whether the space's constraints and the engine's own checks accept ``params``."""
    config, _bad = setup.space.checked_config(params, setup.machine.logical_cores, setup.machine.gpu_count)
    return config is not None


def finalists(setup: StudySetup, trials: list[FrozenTrial], top: int) -> list[Finalist]:
    """The best of each of the ``top`` best kinds, then the untried layout neighbours of each of them."""
    out = [Finalist(dict(t.params), t, "best of its kind") for t in best_of_each_kind(trials, top)]
    kinds = {kind(f.params) for f in out}
    for f in list(out):
        assert f.trial is not None
        for params in layout_neighbours(setup, f.params):
            if kind(params) in kinds:
                continue  # that layout of the same backend is already a finalist, with its own best batch
            kinds.add(kind(params))
            out.append(Finalist(params, None, f"layout of trial {f.trial.number}", f.trial.number))
    return out


def run_final(
    study: Study, setup: StudySetup, chosen: list[Finalist], spec: ScanSpec, repeats: int, say: Log
) -> tuple[int, list[Candidate]]:
    """Scan the finalists ``repeats`` times interleaved; record them; the index of the fastest (median)."""
    runs = [
        Candidate(
            f"trial {f.trial.number}" if f.trial is not None else f.why,
            setup.space.to_config(f.params),
            trial_value(f.trial) if f.trial is not None else None,
        )
        for f in chosen
    ]
    validate(runs, spec, repeats=repeats, log=lambda m: say(m.replace("validation", "final", 1)), again=False)
    study.set_user_attr(
        "final",
        [
            {**c.to_dict(), "trial": f.trial.number if f.trial is not None else None, "why": f.why}
            for c, f in zip(runs, chosen, strict=True)
        ],
    )
    return max(range(len(runs)), key=lambda i: runs[i].images_per_s), runs


def record_variant(study: Study, setup: StudySetup, finalist: Finalist, run: Candidate) -> FrozenTrial:
    """Add a layout neighbour measured in the final to the study as a complete trial; return it."""
    import optuna

    trial = optuna.trial.create_trial(
        params=finalist.params,
        distributions=setup.space.distributions(),
        value=run.images_per_s,
        user_attrs={
            "config": run.config.describe(),
            "final_variant_of": finalist.variant_of,
            "round_images_per_s": list(run.runs),
            "overhead_s": run.overhead_s,
        },
    )
    study.add_trial(trial)
    return study.trials[-1]
