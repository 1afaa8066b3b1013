"""After the search: the final among near ties, the validation against the baseline, the decision, the profile.

Both phases are sized in seconds from the candidates' measured costs (:mod:`autotune.tuner.budget`): together
0.3 of the search's seconds (under a quarter of the study), never fewer than the decision rule's pairs, and
never past what ``--timeout`` leaves. The final runs only when it fits beside the validation's floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autotune.engine.config import EngineConfig, safe_default_for
from autotune.progress import Log
from autotune.tuner import budget, final
from autotune.tuner.budget import RunCost
from autotune.tuner.objective import ScanSpec
from autotune.tuner.options import StudyOptions, StudySetup
from autotune.tuner.outcome import StudyOutcome
from autotune.tuner.pick import Verdict, decision_line, save_pick, verdict_for
from autotune.tuner.profile import Profile, current_profile
from autotune.tuner.search import TrialGuard
from autotune.tuner.storage import complete_trials, trial_value
from autotune.tuner.validation import MAX_PAIRS, Candidate, Validation, validate, validation_spec

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

SAVE_MARGIN_S = 3.0  # kept back from a --timeout for saving the profile and closing the trial process
EXTRA_PASSES = 3  # validation runs are sized for the floor's pairs and this many more


@dataclass
class Clock:
    """The study's phases in seconds, and the deadline a ``--timeout`` sets (monotonic; None: no timeout)."""

    deadline: float | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.monotonic)

    def lap(self, phase: str) -> float:
        """Close ``phase`` now (its seconds added to what it had); the seconds it took this time."""
        now = time.monotonic()
        took, self._mark = now - self._mark, now
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + took
        return took

    def left(self) -> float | None:
        """Seconds until the deadline, less the save margin (None without a timeout)."""
        return None if self.deadline is None else self.deadline - time.monotonic() - SAVE_MARGIN_S


def baseline_candidates(setup: StudySetup, current: Profile | None, complete: list[FrozenTrial]) -> list[Candidate]:
    """What the pick must beat, first: the profile in use, else the safe default; then the safe default (for
    the speed-up figure) where a profile is in use."""
    safe = safe_default_for(setup.machine.logical_cores)
    default = Candidate("default", safe, _trial_figure(complete, safe))
    if current is None:
        return [default]
    return [Candidate("current", current.config, current.trial_images_per_s), default]


def _trial_of(complete: list[FrozenTrial], config: EngineConfig) -> FrozenTrial | None:
    """The best complete trial that ran exactly ``config``."""
    described = config.describe()
    same = [t for t in complete if t.user_attrs.get("config") == described]
    return max(same, key=trial_value) if same else None


def _trial_figure(complete: list[FrozenTrial], config: EngineConfig) -> float | None:
    """The trial figure of ``config``, if a trial ran it."""
    trial = _trial_of(complete, config)
    return trial_value(trial) if trial is not None else None


def cost_of(candidate: Candidate, complete: list[FrozenTrial], current: Profile | None) -> RunCost:
    """One run's cost from the trial that ran the candidate's configuration, else from its profile, else the
    slowest trial's rate (a guess on the safe side)."""
    size = ScanSpec.round_images(candidate.config)
    trial = _trial_of(complete, candidate.config)
    if trial is not None:
        return RunCost.from_attrs(trial.user_attrs, trial_value(trial), size)
    if current is not None and candidate.name == "current":
        attrs = {"startup_s": current.startup_s, "warmup_s": current.overhead_s}
        return RunCost.from_attrs(attrs, current.images_per_s, size)
    slowest = min((trial_value(t) for t in complete), default=1.0)
    return RunCost.from_attrs({}, slowest, size)


def _sized(candidates: list[Candidate], costs: list[RunCost], seconds: float, passes: int, cap: int) -> float:
    """Give each candidate its timed rounds for ``passes`` passes in ``seconds``; the estimated seconds a pass."""
    rounds = budget.timed_rounds(costs, seconds, passes, cap)
    for c, r in zip(candidates, rounds, strict=True):
        c.timed_rounds = r
    return budget.pass_seconds(costs, rounds)


def _validation_floor(
    setup: StudySetup, options: StudyOptions, complete: list[FrozenTrial], current: Profile | None, best: FrozenTrial
) -> float:
    """Seconds of the decision rule's fewest pairs of ``best`` against the baseline (and the safe default)."""
    pick = Candidate("pick", setup.space.to_config(best.params))
    cands = [pick, *baseline_candidates(setup, current, complete)]
    return _floor([cost_of(c, complete, current) for c in cands], options.validate_repeats)


def _floor(costs: list[RunCost], passes: int) -> float:
    """Seconds of ``passes`` passes at the fewest timed rounds."""
    return passes * budget.pass_seconds(costs, [budget.MIN_TIMED_ROUNDS] * len(costs))


RESERVE_BEFORE_TRIALS = 0.25  # of a --timeout, kept for the validation before any trial has measured a cost
RESERVE_CAP = 0.6  # the most of a --timeout kept from the search for the validation and saving
RESERVE_FACTOR = 1.2  # the validation's estimated floor, and a fifth more, is kept from the search


def profile_in_use(setup: StudySetup, options: StudyOptions) -> Profile | None:
    """The profile the pick must beat: this machine's in use for the model's architecture (none when not saving)."""
    return current_profile(setup.machine.machine_id, setup.arch) if options.save else None


def search_deadline(
    study: Study, setup: StudySetup, options: StudyOptions, clock: Clock, current: Profile | None
) -> float | None:
    """When the search must stop so that the validation's floor and the save fit before the ``--timeout``.

    The floor is estimated from the best trial so far and the baseline's measured costs (``current``, the
    profile in use, else the safe default), as :func:`conclude` will size it.
    """
    if clock.deadline is None or options.timeout_s is None:
        return None
    complete = complete_trials(study.get_trials(deepcopy=False))
    if not complete or not options.validate_repeats:
        reserve = RESERVE_BEFORE_TRIALS * options.timeout_s
    else:
        best = max(complete, key=trial_value)
        # With a fifth more: the runs' costs are estimates, and a floor cut short by the clock decides nothing.
        reserve = RESERVE_FACTOR * _validation_floor(setup, options, complete, current, best)
    return clock.deadline - SAVE_MARGIN_S - min(reserve, RESERVE_CAP * options.timeout_s)


def conclude(
    study: Study,
    setup: StudySetup,
    options: StudyOptions,
    trial_guard: TrialGuard,
    clock: Clock,
    say: Log,
) -> StudyOutcome:
    """Final, validation, decision and profile, within the budget the search's seconds and the clock allow."""
    complete = complete_trials(study.trials)
    current = profile_in_use(setup, options)
    rule = validation_spec(setup.spec, setup.trial_images, options.validate_rounds)
    best = max(complete, key=trial_value)
    bases = baseline_candidates(setup, current, complete)
    pairs = options.validate_repeats
    chosen = _finalists(setup, options, complete) if pairs else []
    f_costs = [cost_of(c, complete, current) for c in chosen]
    val_floor = _validation_floor(setup, options, complete, current, best)
    post = budget.post_search_seconds(clock.phase_seconds.get("search", 0.0), val_floor, clock.left())
    final_s = budget.final_seconds(post, _floor(f_costs, options.final_repeats), val_floor) if chosen else None
    if chosen and final_s is None:
        say(f"final: skipped ({len(chosen)} finalists do not fit in {post:.0f} s beside the validation's pairs)")
    if final_s is not None:
        _sized(chosen, f_costs, final_s, options.final_repeats, options.validate_rounds)
        say(f"final: {len(chosen)} finalists (the best of each of the best kinds) x {options.final_repeats} runs, "
            f"interleaved, about {final_s:.0f} s")  # fmt: skip
        winner = final.run_final(study, setup, chosen, rule, options.final_repeats, say)
        best = _trial_named(complete, chosen[winner].name)
        say(f"final: {chosen[winner].name} ran fastest ({chosen[winner].images_per_s:.1f} images/s): it is the pick")
    clock.lap("final")
    candidates = [Candidate("pick", setup.space.to_config(best.params), trial_value(best)), *bases]
    validation = None
    if pairs:
        costs = [cost_of(c, complete, current) for c in candidates]
        seconds = post - clock.phase_seconds.get("final", 0.0)
        validation = _validate(candidates, costs, rule, seconds, clock, options, say)
        study.set_user_attr("validation", validation.to_dict())
    clock.lap("validation")
    verdict = verdict_for(candidates, validation, best, options)
    return _save(study, setup, options, best, candidates[0].config, verdict, trial_guard, clock, say)


def _finalists(setup: StudySetup, options: StudyOptions, complete: list[FrozenTrial]) -> list[Candidate]:
    """The final's candidates, named after their trials; none when fewer than two (or the final is off)."""
    if options.finalists < 2 or options.final_repeats == 0:
        return []
    chosen = final.finalists(complete, options.finalists)
    if len(chosen) < 2:
        return []
    return [
        Candidate(f"trial {f.trial.number}", setup.space.to_config(f.params), trial_value(f.trial)) for f in chosen
    ]


def _trial_named(complete: list[FrozenTrial], name: str) -> FrozenTrial:
    """The trial a finalist's name (``trial N``) stands for."""
    number = int(name.removeprefix("trial "))
    return next(t for t in complete if t.number == number)


def _validate(
    candidates: list[Candidate],
    costs: list[RunCost],
    rule: ScanSpec,
    seconds: float,
    clock: Clock,
    options: StudyOptions,
    say: Log,
) -> Validation:
    """The pick against the baseline (second) in interleaved pairs sized to ``seconds``."""
    pairs = options.validate_repeats
    pass_s = _sized(candidates, costs, seconds, pairs + EXTRA_PASSES, options.validate_rounds)
    left = clock.left()
    say(
        f"validation: the pick against the {candidates[1].name} (and {len(candidates) - 2} more) in at least "
        f"{pairs} interleaved pairs on images the trials did not use: about {pass_s:.0f} s a pair, "
        f"{max(seconds, pairs * pass_s):.0f} s at most"
    )
    return validate(
        candidates,
        rule,
        baseline=candidates[1].name,
        seconds=seconds,
        min_pairs=pairs,
        max_pairs=max(pairs, MAX_PAIRS),
        limit_s=left,
        log=say,
    )


def _save(
    study: Study,
    setup: StudySetup,
    options: StudyOptions,
    best: FrozenTrial,
    config: EngineConfig,
    verdict: Verdict,
    trial_guard: TrialGuard,
    clock: Clock,
    say: Log,
) -> StudyOutcome:
    """Save the pick (in use or not), record the phases, and say the decision in one line."""
    profile, path = None, None
    if options.save:
        profile, path = save_pick(setup, best, config, verdict, trial_guard, clock.phase_seconds)
    clock.lap("save")
    study.set_user_attr("phase_seconds", {k: round(v, 1) for k, v in clock.phase_seconds.items()})
    line = decision_line(profile, config, verdict)
    study.set_user_attr("decision", line)
    by = verdict.by_name
    cur, dflt = by.get("current"), by.get("default")
    validated = verdict.validation is not None
    outcome = StudyOutcome(
        study_name=setup.name,
        storage=setup.url,
        best_trial=best.number,
        config=config,
        trial_images_per_s=trial_value(best),
        images_per_s=verdict.images_per_s,
        spread=verdict.spread,
        unstable=verdict.noisy,
        default_images_per_s=(dflt.images_per_s if validated else dflt.trial_images_per_s) if dflt else None,
        current_images_per_s=cur.images_per_s if cur and validated else None,
        made_current=bool(options.save and verdict.make_current),
        trials={},
        seconds=0.0,
        profile=profile,
        profile_path=path,
        validation=verdict.validation.to_dict() if verdict.validation else {},
        trial_images=setup.trial_images,
        overhead_s=verdict.overhead_s,
        decision=line,
        phase_seconds=dict(clock.phase_seconds),
    )
    say(line)
    return outcome
