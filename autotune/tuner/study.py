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
from typing import TYPE_CHECKING

from autotune.errors import AutotuneError, ConfigError
from autotune.progress import Log, ProgressFactory, quiet
from autotune.tuner.conclude import Clock, conclude, profile_in_use, search_deadline
from autotune.tuner.note import save_study_note
from autotune.tuner.objective import close_trial_process
from autotune.tuner.options import StudyOptions, StudySetup, prepare_study
from autotune.tuner.outcome import StudyOutcome
from autotune.tuner.samplers import make_sampler
from autotune.tuner.search import TrialGuard, search, settle, tally, trial_goal
from autotune.tuner.shared_pick import publish_pick, receive_pick
from autotune.tuner.storage import (
    claim,
    complete_trials,
    fail_orphaned_running,
    state_counts,
    trial_value,
    worker_name,
    writer_storage,
)

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["StudyOptions", "StudyOutcome", "run_study"]

OBJECTIVE_NAME = "images_per_s"


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
    round by round. Trial 0 is the space's default configuration. The best kinds then meet in a final, and
    the pick is validated against the baseline (the profile in use, else the safe default) in interleaved
    pairs on images the trials did not use: it becomes the profile in use when it is faster by a one-sided
    sign test at p < 0.05 (or with ``save_profile``); either way it is saved, and the outcome's ``decision``
    says why in one line. The final and the validation are sized in seconds from the measured rates (0.3
    of the search's time, never fewer pairs than the test needs); ``timeout_s`` bounds the whole study, the
    search stopping early enough to validate and save in the time left. ``log`` receives one line per trial
    and step, ``progress`` the generation of the embedded corpus if it must be built; nothing is printed.

    Example:
        >>> out = run_study(StudyOptions(device="cpu", trials=10), log=console.log)
        >>> out.config.describe(), out.images_per_s, out.made_current, out.phase_seconds
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
    clock = Clock(deadline=None if options.timeout_s is None else time.monotonic() + options.timeout_s)
    setup = prepare_study(options, progress)
    study, storage, before = _open_study(setup, options)
    me = worker_name()
    say(f"study {setup.name} ({len(before)} trials so far) on {setup.machine.summary()}; this worker: {me}")
    say(f"each trial: {setup.spec.rounds} timed batch rounds, at most {setup.trial_images} images")
    goal = trial_goal(study, options.trials, say)
    trial_guard = TrialGuard(setup, options, say)
    clock.lap("setup")

    # Read once: the search asks for its deadline before and during every trial.
    current = profile_in_use(setup, options) if options.timeout_s is not None else None

    def deadline() -> float | None:
        """The search's end: what a --timeout leaves once the validation's floor is kept back."""
        return search_deadline(study, setup, options, clock, current)

    measured_here = search(study, setup, options, trial_guard, say, goal, deadline)
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
            measured_here += search(study, setup, options, trial_guard, say, goal, deadline)
            settle(study, options, say)
        if any(t.user_attrs.get("worker") not in (None, me) for t in study.trials if t.number not in before):
            say(f"this worker ({me}) validates and saves the pick for every worker of the study")
        stopped_early = tally(study).measured < goal
        clock.lap("search")
        outcome = conclude(study, setup, options, trial_guard, clock, say)
        if outcome.profile is not None:  # for the study's other workers and later pulls, whatever their disk
            publish_pick(study, goal, outcome.profile, outcome.made_current)
        outcome.validated_by = me
        outcome.stopped_early = stopped_early
        if stopped_early:
            say(f"--timeout stopped the search at {tally(study).measured} of {goal} trials; the pick is of those")
    else:
        by = str(holder.get("worker"))
        say(f"the pick is validated and saved by {by} (claimed at {holder.get('at')}); this worker stops here")
        clock.lap("search")
        outcome = _picked_elsewhere(setup, complete_trials(study.trials), by)
        if options.save:
            got = receive_pick(storage, setup.name, goal, _pick_wait_s(clock, time.perf_counter() - t_start), say)
            if got is not None:
                outcome.profile, outcome.profile_path, outcome.made_current = got.profile, got.path, got.in_use
        clock.lap("save")
        outcome.phase_seconds = dict(clock.phase_seconds)
    outcome.worker, outcome.measured_here = me, measured_here
    outcome.trials = state_counts(t for t in study.trials if t.number not in before)
    outcome.seconds = time.perf_counter() - t_start
    return outcome


PICK_WAIT_MIN_S = 60.0


def _pick_wait_s(clock: Clock, elapsed_s: float) -> float:
    """How long a worker waits for the pick another worker validates: a minute plus as long as this worker has
    run (the validation and final take 0.3 of the search's seconds, and the search ran no longer than this
    worker), never past a ``--timeout``. A validating worker that died is waited for no longer than that."""
    limit = PICK_WAIT_MIN_S + elapsed_s
    left = clock.left()
    return limit if left is None else max(0.0, min(limit, left))


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
