"""The study's trial loop: each proposal is checked (feasible, accurate enough, not measured yet), then measured.

Like Optuna's own ``_optimize``, the public :func:`autotune.tuner.study.run_study` stays short and the loop
lives here: the objective runs one trial, and the callback decides when the study stops (enough measured
trials, no improvement for ``patience`` trials, or a setup that fails every trial).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError
from autotune.models import guard
from autotune.models.calibration import config_calibration
from autotune.progress import Log
from autotune.tuner.objective import TrialFailed, TrialStopped, measure
from autotune.tuner.options import StudyOptions, StudySetup
from autotune.tuner.storage import trial_value

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial

FAIL_FAST = 3  # this many failures before any success means the setup, not the config, is broken


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

    @property
    def gave_up(self) -> bool:
        """Whether the first trials all failed: then the setup, not a configuration, is broken."""
        return bool(self.diagnosis) and not self.any_success and self.failures_before_success >= FAIL_FAST

    def objective(self, trial: Trial) -> float:
        """One trial: refuse an infeasible proposal, answer a repeat from the study, else measure it."""
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

        space, machine = self.setup.space, self.setup.machine
        bad = space.violations(params)
        config = None
        if not bad:
            try:
                config = space.to_config(params).validate(cores=machine.logical_cores, gpus=machine.gpu_count)
            except ConfigError as exc:
                bad = [str(exc)]
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

        def on_round(k: int, rate: float) -> bool:
            """Report round ``k``; True asks the scan to stop."""
            trial.report(rate, k)
            return bool(trial.should_prune())

        try:
            m = measure(config, self.setup.spec, on_round)
        except TrialStopped as stop:
            trial.set_user_attr("round_images_per_s", stop.args[0] if stop.args else [])
            raise optuna.TrialPruned("pruned: among the slowest quarter at the same round") from None
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        for key, value in m.attrs().items():
            trial.set_user_attr(key, value)
        reused = f", {m.reused_images} images reused" if m.reused_images else ""
        self.say(
            f"trial {trial.number}: {m.images_per_s:.2f} images/s  [{config.describe()}]  "
            f"start-up {m.startup_s:.1f} s{reused}; bottleneck: {m.bottleneck}"
        )
        return m.images_per_s

    def callback(self, study: Study, trial: FrozenTrial) -> None:
        """After each trial: count it, and stop the study when it has done enough or cannot succeed."""
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL:
            self._failed(study, trial)
        elif trial.state == TrialState.COMPLETE:
            self._completed(study, trial)
        if self.runs >= self.options.trials:
            study.stop()

    def _failed(self, study: Study, trial: FrozenTrial) -> None:
        """Say why; stop after FAIL_FAST failures before any success."""
        reason = trial.user_attrs.get("fail_reason", "unknown")
        self.say(f"trial {trial.number} failed: {reason}")
        if not self.any_success:
            self.failures_before_success += 1
            self.diagnosis.append(reason)
            if self.failures_before_success >= FAIL_FAST:
                study.stop()

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
            study.stop()


def _measured_twin(trial: Trial, params: dict[str, object]) -> FrozenTrial | None:
    """A complete trial of the same study with exactly these parameters, if any."""
    from optuna.trial import TrialState

    done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((t for t in done if t.params == params), None)


def search(study: Study, setup: StudySetup, options: StudyOptions, trial_guard: TrialGuard, say: Log) -> None:
    """Run the trials: feasibility, accuracy guard, measurement with round-by-round pruning."""
    trials = _Trials(setup, options, trial_guard, say)
    try:
        study.optimize(
            trials.objective,
            n_trials=options.trials * 5,
            timeout=options.timeout_s,
            callbacks=[trials.callback],
            catch=(TrialFailed,),
            gc_after_trial=False,
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
