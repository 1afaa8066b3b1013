"""The study's final: diverse finalists scanned again side by side, interleaved, to choose the pick.

Trials run minutes apart, and a shared machine's speed drifts within minutes: a trial measured in a fast
minute beats a better configuration measured in a slow one, and a sampler spends most of its trials near
whatever looked best early. So the final does not trust the trial ranking beyond choosing *which kinds* of
configuration to compare: the best trial of each of the best ``top`` kinds (backend and replica layout), so
that three batch-size neighbours of one kind cannot crowd out a different backend or layout, each within
:data:`WITHIN` of the best trial (a kind several times slower is not a near tie a drift could have decided).

Replica layouts are ordinary points of the space (``cpu_layout``), so every layout a study measured is a
kind of its own here. Each finalist is scanned in interleaved passes on images the trials did not use, its
timed rounds sized from its measured rate to fit the final's seconds (:mod:`autotune.tuner.budget`); the
fastest median is the pick. This pass only chooses: the validation that follows measures the pick afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.progress import Log
from autotune.tuner.options import StudySetup
from autotune.tuner.storage import distinct_top, trial_value
from autotune.tuner.validation import Candidate, run_passes

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from autotune.tuner.objective import ScanSpec

# The parameters that make a configuration's *kind*; the rest (batch, producers, scheduling) are tuned within it.
KIND_KEYS = ("cpu_backend", "gpu_backend", "cpu_layout", "cpu_models", "cpu_threads", "gpu_models")
WITHIN = 0.67  # a kind's best trial must reach this share of the best trial's figure to be a finalist


@dataclass
class Finalist:
    """One configuration in the final: its parameters and the trial it came from."""

    params: dict[str, Any]
    trial: FrozenTrial


def kind(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The kind of a configuration: its backends and replica layout."""
    return tuple((k, params[k]) for k in KIND_KEYS if k in params)


def best_of_each_kind(trials: list[FrozenTrial], top: int) -> list[FrozenTrial]:
    """The best complete trial of each kind, best first, ``top`` kinds at most."""
    return distinct_top(trials, top, key=kind)


def finalists(trials: list[FrozenTrial], top: int) -> list[Finalist]:
    """The best of each of the ``top`` best kinds that come within :data:`WITHIN` of the best trial."""
    best = best_of_each_kind(trials, top)
    if not best:
        return []
    floor = WITHIN * trial_value(best[0])
    return [Finalist(dict(t.params), t) for t in best if trial_value(t) >= floor]


def run_final(
    study: Study, setup: StudySetup, chosen: list[Candidate], spec: ScanSpec, passes: int, say: Log
) -> int:
    """Scan the finalists in ``passes`` interleaved passes; record them in the study; the index of the fastest."""
    run_passes(chosen, spec, passes, say, label="final")
    study.set_user_attr("final", [c.to_dict() for c in chosen])
    return max(range(len(chosen)), key=lambda i: chosen[i].images_per_s)
