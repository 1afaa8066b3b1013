"""The study's trial loop: each proposal is checked (feasible, accurate enough, not measured yet), then measured.

Like Optuna's own ``_optimize``, the public :func:`autotune.tuner.study.run_study` stays short and the loop
lives here: the objective runs one trial, and the callback decides when this worker stops (no improvement for
``patience`` trials, or a setup that fails every trial).

Several workers (identical machines) may run this loop on one shared study, a trial at a time each: a trial
owns its machine. The study holds its goal, the number of measured trials this run of it must reach, so
``--trials`` is a total across workers. A worker starts a trial only while the measured and running trials
fall short of the goal; when the rest are running elsewhere it waits, and watches their heartbeats: a dead
worker's trial is failed and queued again, and the waiting worker measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.engine.config import EngineConfig, config_calibration
from autotune.errors import AutotuneError, ConfigError
from autotune.models import guard
from autotune.progress import Log
from autotune.tuner.objective import TrialFailed, TrialStopped, measure
from autotune.tuner.options import StudyOptions, StudySetup
from autotune.tuner.storage import fail_orphaned_running, trial_value, worker_name

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial

FAIL_FAST = 3  # this many failures before any success means the setup, not the config, is broken
GOAL_KEY = "trial_goal"  # study user attribute: the measured trials the study's current run must reach


@dataclass(frozen=True)
class Tally:
    """Where a shared study stands: trials measured, running (on any worker) and queued."""

    measured: int
    running: int
    waiting: int


def is_measured(trial: FrozenTrial) -> bool:
    """Whether a finished trial paid for a scan: not an infeasible proposal, a repeat, a final's variant, or a
    trial failed for a dead worker (its parameters are queued again)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return "repeat_of" not in attrs and "final_variant_of" not in attrs
    if trial.state == TrialState.PRUNED:
        return not attrs.get("infeasible")
    return trial.state == TrialState.FAIL and "fail_reason" in attrs


def tally(study: Study) -> Tally:
    """Count the study's measured, running and waiting trials (one read of the storage)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return Tally(
        measured=sum(1 for t in trials if is_measured(t)),
        running=sum(1 for t in trials if t.state == TrialState.RUNNING),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
    )


def trial_goal(study: Study, trials: int, say: Log) -> int:
    """The measured trials this run of the study must reach: join the goal of a run under way, else set one.

    A run is under way while the study holds a goal its measured trials fall short of (other workers on it, or a
    run killed before it ended); otherwise this worker starts one, ``trials`` more than are measured now. Two
    workers starting together compute the same goal.
    """
    now = tally(study)
    goal = study.user_attrs.get(GOAL_KEY)
    if isinstance(goal, int) and now.measured < goal:
        say(f"joining the study's run under way: {now.measured} of {goal} trials measured (--trials is its total)")
        return goal
    goal = now.measured + trials
    study.set_user_attr(GOAL_KEY, goal)
    return goal


class TrialGuard:
    """The accuracy guard inside a study: the fp32 reference built once, checks cached per backend."""

    def __init__(self, setup: StudySetup, options: StudyOptions, say: Log) -> None:
        """No reference yet: it is built on the first configuration that needs one."""
        self.setup, self.options, self.say = setup, options, say
        self.reference: guard.GuardReference | None = None

    def checks(self, config: EngineConfig) -> list[guard.GuardResult]:
        """Guard results for the config's non-reference backends (empty for fp32 eager)."""
        if not guard.non_reference_parts(config):
            return []
        if self.reference is None:
            self.say("accuracy guard: computing fp32 reference embeddings of the validation sample (once)")
            self.reference = guard.build_reference(
                self.setup.source,
                self.setup.model,
                sample=self.options.guard_sample,
                image_column=self.options.image_column,
            )
        cal = config_calibration(self.setup.source, self.setup.model, config)
        return guard.check_config(
            self.reference, self.setup.model, config, self.options.guard_threshold, cal, source=self.setup.source
        )

    def violations(self, config: EngineConfig, trial: Trial) -> list[str]:
        """Guard failures as infeasibility reasons; every result is recorded on the trial."""
        bad = []
        for result in self.checks(config):
            trial.set_user_attr(
                f"guard_{result.backend}_{result.precision}",
                {
                    "min_cosine": result.min_cosine,
                    "centred_min_cosine": result.centred_min_cosine,
                    "probe_overlap_min": result.probe_overlap_min,
                    "enforced_overlap": result.enforced_overlap,
                    "passed": result.passed,
                },
            )
            if not result.passed:
                bad.append(f"accuracy guard: {result.backend}/{result.precision}: {result.reason}")
        return bad


class _Trials:
    """The objective and the stopping callback of one ``study.optimize`` run, sharing its counts."""

    def __init__(self, setup: StudySetup, options: StudyOptions, trial_guard: TrialGuard, say: Log) -> None:
        """Nothing measured yet."""
        self.setup, self.options, self.guard, self.say = setup, options, trial_guard, say
        self.runs = 0  # trials measured in this run (repeats and infeasible proposals cost nothing)
        self.failures_before_success = 0
        self.any_success = False
        self.best: float | None = None
        self.since_best = 0
        self.diagnosis: list[str] = []
        self.stopped = False  # patience ran out, or the setup is broken
        self.deadline: Callable[[], float | None] | None = None  # the search's end (--timeout), if any

    @property
    def gave_up(self) -> bool:
        """Whether the first trials all failed: then the setup, not a configuration, is broken."""
        return bool(self.diagnosis) and not self.any_success and self.failures_before_success >= FAIL_FAST

    def objective(self, trial: Trial) -> float:
        """One trial: refuse an infeasible proposal, answer a repeat from the study, else measure it."""
        trial.set_user_attr("worker", worker_name())  # which machine measured it (a re-queued trial: the new one)
        params = self.setup.space.suggest(trial)
        config = self._feasible(trial, params)
        trial.set_user_attr("config", config.describe())
        twin = _measured_twin(trial, params)
        if twin is not None:
            # TPE proposes a measured point again now and then (about 1 trial in 6 on a small space, by the
            # sampler replay): answer from the study instead of paying for the same scan twice.
            trial.set_user_attr("repeat_of", twin.number)
            return trial_value(twin)
        self.runs += 1
        return self._measure(trial, config)

    def _feasible(self, trial: Trial, params: dict[str, object]) -> EngineConfig:
        """The proposal's validated config; an infeasible one is recorded and pruned, never run."""
        import optuna

        machine = self.setup.machine
        config, bad = self.setup.space.checked_config(params, machine.logical_cores, machine.gpu_count)
        if not bad and config is not None:
            small = self.setup.spec.too_small_for(config)
            bad = [small] if small else self.guard.violations(config, trial)
        if bad or config is None:
            trial.set_user_attr("infeasible", bad)
            raise optuna.TrialPruned(f"infeasible: {bad[0]}")
        return config

    def _measure(self, trial: Trial, config: EngineConfig) -> float:
        """Measure the config, reporting each timed round so that the pruner can stop a clearly worse one."""
        import optuna

        stop_at = self.deadline() if self.deadline is not None else None
        late = False

        def on_round(k: int, rate: float) -> bool:
            """Report round ``k``; True asks the scan to stop (pruned, or the search's time is up)."""
            nonlocal late
            trial.report(rate, k)
            late = stop_at is not None and time.monotonic() >= stop_at
            return late or bool(trial.should_prune())

        try:
            m = measure(config, self.setup.spec, on_round)
        except TrialStopped as stop:
            trial.set_user_attr("round_images_per_s", stop.args[0] if stop.args else [])
            if late:
                trial.set_user_attr("stopped", "--timeout")
                self.stopped = True
                raise optuna.TrialPruned("stopped: the search's time is up (--timeout)") from None
            raise optuna.TrialPruned("pruned: among the slowest quarter at the same round") from None
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        for key, value in m.attrs().items():
            trial.set_user_attr(key, value)
        reused = f", {m.reused_images} images reused" if m.reused_images else ""
        left = f"; search: {stop_at - time.monotonic():.0f} s left (--timeout)" if stop_at is not None else ""
        self.say(
            f"trial {trial.number}: {m.images_per_s:.2f} images/s  [{config.describe()}]  "
            f"start-up {m.startup_s:.1f} s{reused}; bottleneck: {m.bottleneck}{left}"
        )
        return m.images_per_s

    def callback(self, study: Study, trial: FrozenTrial) -> None:
        """After each trial: count it, and stop this worker when the study cannot succeed or stopped improving."""
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL:
            self._failed(study, trial)
        elif trial.state == TrialState.COMPLETE:
            self._completed(study, trial)

    def _failed(self, study: Study, trial: FrozenTrial) -> None:
        """Say why; stop after FAIL_FAST failures before any success."""
        reason = trial.user_attrs.get("fail_reason", "unknown")
        self.say(f"trial {trial.number} failed: {reason}")
        if not self.any_success:
            self.failures_before_success += 1
            self.diagnosis.append(reason)
            if self.failures_before_success >= FAIL_FAST:
                self.stopped = True

    def _completed(self, study: Study, trial: FrozenTrial) -> None:
        """Track the best value; stop after ``patience`` trials without improvement."""
        self.any_success = True
        value = trial_value(trial)
        if self.best is None or value > self.best:
            self.best, self.since_best = value, 0
            return
        self.since_best += 1
        if self.options.patience and self.since_best >= self.options.patience:
            self.say(f"no improvement for {self.options.patience} trials: stopping")
            self.stopped = True


def _measured_twin(trial: Trial, params: dict[str, object]) -> FrozenTrial | None:
    """A complete trial of the same study with exactly these parameters, if any."""
    from optuna.trial import TrialState

    done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((t for t in done if t.params == params), None)


def search(
    study: Study,
    setup: StudySetup,
    options: StudyOptions,
    trial_guard: TrialGuard,
    say: Log,
    goal: int,
    deadline: Callable[[], float | None] | None = None,
) -> int:
    """Run trials until the study holds ``goal`` measured ones: feasibility, accuracy guard, measurement with
    round-by-round pruning; wait while the last ones run on other workers, and take over a dead worker's.

    ``deadline()`` (monotonic seconds, None for none) ends the search: no trial starts after it, and a trial
    running at it is stopped at its next round (recorded as pruned), leaving the rest of a ``--timeout`` to the
    validation. Returns the number of trials this worker measured.
    """
    trials = _Trials(setup, options, trial_guard, say)
    trials.deadline = deadline
    proposals = 0
    told_waiting = False
    try:
        while not trials.stopped:
            stop_at = deadline() if deadline is not None else None
            if stop_at is not None and time.monotonic() >= stop_at:
                say(f"--timeout: the search stops after {proposals} proposals, leaving the rest to the validation")
                break
            fail_orphaned_running(study)  # a dead worker's trial goes back to the queue, for this worker to take
            now = tally(study)
            if now.measured >= goal and now.waiting == 0:  # a dead worker's queued trial is run even past the goal
                break
            if now.waiting == 0 and now.measured + now.running >= goal:
                if not told_waiting:
                    say(f"{now.running} trial(s) of the last ones run on other workers: waiting for them")
                    told_waiting = True
                time.sleep(options.heartbeat_s)
                continue
            # Infeasible proposals and repeats cost no scan; this bounds a space where nearly all are.
            if proposals >= options.trials * 5:
                break
            told_waiting = False
            proposals += 1
            study.optimize(
                trials.objective, n_trials=1, callbacks=[trials.callback], catch=(TrialFailed,), gc_after_trial=False
            )
    except KeyboardInterrupt:
        say("interrupted: the study is saved; run the same command again to resume")
        raise
    except ValueError as exc:
        if "different distribution" not in str(exc):
            raise
        raise ConfigError(
            f"study {setup.name} was created with another search space; pass --study-name to start a new one"
        ) from None
    if trials.gave_up:
        raise AutotuneError(f"the first {FAIL_FAST} trials all failed; the last reason: {trials.diagnosis[-1]}")
    return trials.runs


def settle(study: Study, options: StudyOptions, say: Log) -> None:
    """Wait until no trial runs on any worker (a dead worker's is failed once its heartbeat is stale)."""
    told = False
    while True:
        fail_orphaned_running(study)
        now = tally(study)
        if now.running == 0:
            return
        if not told:
            say(f"waiting for {now.running} trial(s) still running on other workers")
            told = True
        time.sleep(options.heartbeat_s)
