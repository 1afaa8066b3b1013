"""`autotune study`: an Optuna search over the engine's knobs, measured on a fixed scan, saved as a profile.

The steps: resolve the options (:mod:`~autotune.tuner.options`), open or resume the study
(:mod:`~autotune.tuner.storage`), run the trials (:mod:`~autotune.tuner.search`), validate the pick on
unseen images (:mod:`~autotune.tuner.validation`), and save it as this machine's profile.

Several identical machines may run the same command on one study in a database server (``--storage
postgresql://...``): they share the trials; the default is enqueued once, and the first worker to finish claims
the pick (:func:`~autotune.tuner.storage.claim`), waits for the trials still running elsewhere, validates and
saves it; the others say which worker did and stop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError
from autotune.progress import Log, ProgressFactory, quiet
from autotune.tuner import final
from autotune.tuner.note import save_study_note
from autotune.tuner.objective import ScanSpec, close_trial_process
from autotune.tuner.options import StudyOptions, StudySetup, prepare_study
from autotune.tuner.pick import candidates_for, save_pick, verdict_for
from autotune.tuner.profile import (
    REFERENCE_IMAGES,
    Profile,
    current_profile,
    predict_seconds,
)
from autotune.tuner.samplers import make_sampler
from autotune.tuner.search import TrialGuard, search, settle, tally, trial_goal
from autotune.tuner.storage import (
    claim,
    complete_trials,
    fail_orphaned_running,
    state_counts,
    trial_value,
    worker_name,
    writer_storage,
)
from autotune.tuner.validation import Validation, validate, validation_spec

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["StudyOptions", "StudyOutcome", "run_study"]

OBJECTIVE_NAME = "images_per_s"


@dataclass
class StudyOutcome:
    """The study's pick: its trial figure, its validated figure, the default's, and the profile it saved."""

    study_name: str
    storage: str
    best_trial: int
    config: EngineConfig
    trial_images_per_s: float
    images_per_s: float  # validated (the trial figure when validation was off)
    spread: float
    unstable: bool
    default_images_per_s: float | None
    current_images_per_s: float | None
    made_current: bool
    trials: dict[str, int]
    seconds: float
    profile: Profile | None
    profile_path: Path | None
    validation: dict[str, Any] = field(default_factory=dict)
    trial_images: int = 0
    overhead_s: float = 0.0  # warm-up and drain seconds beyond the steady rate (validation median)
    worker: str = ""  # this worker (host:pid)
    validated_by: str = ""  # the worker that validated and saved the pick (this one, or another of the study)
    measured_here: int = 0  # trials this worker measured

    @property
    def validated_here(self) -> bool:
        """Whether this worker validated and saved the pick (else another worker of the study did)."""
        return self.validated_by == self.worker

    def predicted_images_per_s(self, images: int) -> float:
        """Predicted images/s of a scan of ``images`` images (start-up excluded, as `retrieve` reports it)."""
        return images / predict_seconds(images, self.images_per_s, self.overhead_s)

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON; a worker that did not validate the pick reports no validated figure."""
        if not self.validated_here:
            return {
                "study": self.study_name,
                "storage": self.storage,
                "worker": self.worker,
                "validated_by": self.validated_by,
                "trials_measured_here": self.measured_here,
                "best_trial": self.best_trial,
                "config": self.config.describe(),
                "trial_images_per_s": round(self.trial_images_per_s, 3),
                **{f"trials_{k}": v for k, v in self.trials.items()},
                "seconds": round(self.seconds, 1),
            }
        gain = self.images_per_s / self.default_images_per_s if self.default_images_per_s else None
        ratio = self.trial_images_per_s / self.images_per_s if self.images_per_s else None
        return {
            "worker": self.worker,
            "validated_by": self.validated_by,
            "trials_measured_here": self.measured_here,
            "study": self.study_name,
            "storage": self.storage,
            "best_trial": self.best_trial,
            "config": self.config.describe(),
            "trial_images_per_s": round(self.trial_images_per_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            "trial_over_validated": round(ratio, 3) if ratio else None,
            "spread": round(self.spread, 4),
            "unstable": self.unstable,
            "default_images_per_s": round(self.default_images_per_s, 3) if self.default_images_per_s else None,
            "speedup_over_default": round(gain, 3) if gain else None,
            "current_profile_images_per_s": (
                round(self.current_images_per_s, 3) if self.current_images_per_s else None
            ),
            "profile_in_use": self.made_current,
            "overhead_s": round(self.overhead_s, 3),
            "predicted_seconds_500k": (
                round(predict_seconds(REFERENCE_IMAGES, self.images_per_s, self.overhead_s), 1)
                if self.images_per_s
                else None
            ),
            "max_trial_images": self.trial_images,
            **{f"trials_{k}": v for k, v in self.trials.items()},
            "seconds": round(self.seconds, 1),
            "profile": str(self.profile_path) if self.profile_path else None,
        }


def _open_study(setup: StudySetup, options: StudyOptions) -> tuple[Study, RDBStorage, set[int]]:
    """Create or resume the Optuna study (with its storage and the trial numbers it had); refuse one measured
    differently. Workers sharing the study may open it at the same moment: every step here allows that."""
    import optuna

    # Our own log lines report every trial; Optuna's would repeat failures with full tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = writer_storage(setup.url, options.heartbeat_s)
    study = optuna.create_study(
        study_name=setup.name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(options.sampler, options.seed, options.trials),
        # Prune only the clearly slow (bottom quarter at the same round), not everything under the median: on a
        # machine whose speed drifts, every trial run in a slow phase is under the median of the earlier ones.
        pruner=optuna.pruners.PercentilePruner(25.0, n_startup_trials=3, n_warmup_steps=1),
    )
    stored = study.user_attrs.get("signature")
    if stored is not None and stored != setup.signature:
        changed = sorted(k for k in set(stored) | set(setup.signature) if stored.get(k) != setup.signature.get(k))
        raise ConfigError(
            f"study {setup.name} was measured differently ({', '.join(changed)} changed): its trials cannot be "
            "compared with new ones; pass another --study-name, or the same settings as before"
        )
    study.set_metric_names([OBJECTIVE_NAME])
    study.set_user_attr("signature", setup.signature)
    study.set_user_attr("machine", setup.machine.summary())
    study.set_user_attr("machine_id", setup.machine.machine_id)
    study.set_user_attr("arch", setup.arch)  # with machine_id: which stored roofline `report` compares against
    study.set_user_attr("space", setup.space.source)
    study.set_user_attr("scan", {"dataset": setup.dataset, "model": setup.model, **setup.spec.describe()})
    save_study_note(study, setup.machine, setup.space, setup.spec)
    fail_orphaned_running(study)
    before = {t.number for t in study.trials}
    # Trial 0 is the default, enqueued once however many workers open the study together: the claim decides.
    if not any(t.user_attrs.get("default") for t in study.trials):
        won, _ = claim(storage, setup.name, "claim:default", {"worker": worker_name()})
        if won:
            study.enqueue_trial(setup.space.default_params(), user_attrs={"default": True}, skip_if_exists=True)
    return study, storage, before


def run_study(options: StudyOptions, log: Log | None = None, progress: ProgressFactory | None = None) -> StudyOutcome:
    """Search the space for the fastest engine configuration on this machine, validate it, save a profile.

    Each trial runs the engine in the trial process and times its steady state over ``rounds`` batch rounds
    (every replica busy; start-up, warm-up and drain recorded apart), so clearly worse trials are pruned
    round by round. Trial 0 is the space's default configuration; infeasible proposals are recorded, never
    run. The pick (best trial) is then validated against trial 0 and the profile in use on a longer scan of
    images the trials did not use, interleaved; its profile keeps the trial figure, the validated figure and
    their ratio, and becomes the one in use only when it validates faster than the current one (or with
    ``save_profile``). ``log`` receives one line per trial and step, ``progress`` the generation of the embedded
    corpus if it must be built; nothing is printed.

    Example:
        >>> out = run_study(StudyOptions(device="cpu", trials=10), log=console.log)
        >>> out.config.describe(), out.images_per_s, out.trial_images_per_s
    """
    try:
        return _run_study(options, log, progress)
    finally:
        close_trial_process()  # no idle trial process outlives the study that used it


def _run_study(options: StudyOptions, log: Log | None, progress: ProgressFactory | None) -> StudyOutcome:
    """:func:`run_study`'s steps: set up, search, then validate and save the pick (or leave it to its holder)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    say = log or quiet
    t_start = time.perf_counter()
    setup = prepare_study(options, progress)
    study, storage, before = _open_study(setup, options)
    me = worker_name()
    say(f"study {setup.name} ({len(before)} trials so far) on {setup.machine.summary()}; this worker: {me}")
    say(f"each trial: {setup.spec.rounds} timed batch rounds, at most {setup.trial_images} images")
    goal = trial_goal(study, options.trials, say)
    trial_guard = TrialGuard(setup, options, say)
    measured_here = search(study, setup, options, trial_guard, say, goal)
    if not complete_trials(study.trials):
        raise AutotuneError("no trial completed: nothing to pick (see `autotune report` for the reasons)")
    # One worker validates and saves the pick of this run of the study: the first to get here.
    holder_attrs = {"worker": me, "machine_id": setup.machine.machine_id}
    won, holder = claim(storage, setup.name, f"claim:pick:{goal}", holder_attrs)
    if won:
        # The pick is chosen among every trial, including those still running elsewhere, and those of a worker
        # that died meanwhile (queued again: this worker measures them).
        settle(study, options, say)
        while tally(study).waiting:
            measured_here += search(study, setup, options, trial_guard, say, goal)
            settle(study, options, say)
        complete = complete_trials(study.trials)
        if any(t.user_attrs.get("worker") not in (None, me) for t in study.trials if t.number not in before):
            say(f"this worker ({me}) validates and saves the pick for every worker of the study")
        best = _final(study, setup, options, complete, say)
        default = next((t for t in study.trials if t.user_attrs.get("default") and t.value is not None), None)
        outcome = _validate_and_save(study, setup, options, best, default, trial_guard, say)
        outcome.validated_by = me
    else:
        by = str(holder.get("worker"))
        say(f"the pick is validated and saved by {by} (claimed at {holder.get('at')}); this worker stops here")
        outcome = _picked_elsewhere(setup, complete_trials(study.trials), by)
    outcome.worker, outcome.measured_here = me, measured_here
    outcome.trials = state_counts(t for t in study.trials if t.number not in before)
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _picked_elsewhere(setup: StudySetup, complete: list[FrozenTrial], by: str) -> StudyOutcome:
    """The outcome of a worker whose study's pick another worker validates: the best trial so far, no profile."""
    best = max(complete, key=trial_value)
    return StudyOutcome(
        study_name=setup.name,
        storage=setup.url,
        best_trial=best.number,
        config=setup.space.to_config(best.params),
        trial_images_per_s=trial_value(best),
        images_per_s=trial_value(best),
        spread=0.0,
        unstable=False,
        default_images_per_s=None,
        current_images_per_s=None,
        made_current=False,
        trials={},
        seconds=0.0,
        profile=None,
        profile_path=None,
        trial_images=setup.trial_images,
        validated_by=by,
    )


def _final(
    study: Study, setup: StudySetup, options: StudyOptions, complete: list[FrozenTrial], say: Log
) -> FrozenTrial:
    """The pick: the fastest of diverse finalists scanned again side by side (see :mod:`autotune.tuner.final`)."""
    chosen = final.finalists(setup, complete, options.finalists) if options.finalists > 1 else []
    if len(chosen) < 2 or options.validate_repeats == 0 or options.final_repeats == 0:
        return max(complete, key=trial_value)  # ties: the earlier trial
    say(
        f"final: {len(chosen)} finalists (the best of each of the best kinds, and their untried layout "
        f"neighbours) x {options.final_repeats} runs, interleaved"
    )
    winner, runs = final.run_final(study, setup, chosen, _validation_rule(setup, options), options.final_repeats, say)
    picked: FrozenTrial | None = chosen[winner].trial
    for f, run in zip(chosen, runs, strict=True):
        if f.trial is None:
            recorded = final.record_variant(study, setup, f, run)
            picked = recorded if f is chosen[winner] else picked
    assert picked is not None
    if winner:
        say(f"final: {runs[winner].name} ran fastest ({runs[winner].images_per_s:.1f} images/s): it is the pick")
    return picked


def _validation_rule(setup: StudySetup, options: StudyOptions) -> ScanSpec:
    """How the final and the validation scan: longer windows, on images the trials did not use."""
    return validation_spec(setup.spec, setup.trial_images, options.validate_rounds, options.validate_min_images)


def _validate_and_save(
    study: Study,
    setup: StudySetup,
    options: StudyOptions,
    best: FrozenTrial,
    default: FrozenTrial | None,
    trial_guard: TrialGuard,
    say: Log,
) -> StudyOutcome:
    """Validate the pick against the default and the profile in use; save it; choose the profile in use."""
    current = current_profile(setup.machine.machine_id, setup.arch) if options.save else None
    candidates = candidates_for(setup, best, default, current)
    validation: Validation | None = None
    if options.validate_repeats > 0:
        vspec = _validation_rule(setup, options)
        say(f"validation: {len(candidates)} candidates x {options.validate_repeats} runs on unseen images")
        validation = validate(candidates, vspec, options.validate_repeats, say)
        study.set_user_attr("validation", validation.to_dict())
    verdict = verdict_for(candidates, validation, best, options, say)
    config = candidates[0].config
    profile: Profile | None = None
    path: Path | None = None
    if options.save:
        profile, path = save_pick(setup, best, config, verdict, trial_guard, say)
    cur, dflt = verdict.by_name.get("current"), verdict.by_name.get("default")
    return StudyOutcome(
        study_name=setup.name,
        storage=setup.url,
        best_trial=best.number,
        config=config,
        trial_images_per_s=trial_value(best),
        images_per_s=verdict.images_per_s,
        spread=verdict.spread,
        unstable=verdict.unstable,
        default_images_per_s=(dflt.images_per_s if validation else dflt.trial_images_per_s) if dflt else None,
        current_images_per_s=cur.images_per_s if cur and validation else None,
        made_current=bool(options.save and verdict.make_current),
        trials={},
        seconds=0.0,
        profile=profile,
        profile_path=path,
        validation=validation.to_dict() if validation else {},
        trial_images=setup.trial_images,
        overhead_s=verdict.overhead_s,
    )
