"""The study's last word: the pick against what would run otherwise, measured again on unseen images.

The trial figure that selected the pick is biased upwards (it won a noisy contest), so the figure a profile
keeps comes from here: runs on images the trials did not use, the candidates interleaved so that drifts of
the machine hit all of them alike, and the median kept. Whether the pick goes in use is decided by comparison,
not by how quiet the machine was: in each interleaved pass the pick and the baseline (the profile in use, or
the safe default where there is none) form a pair, and a one-sided sign test over the pairs must find the pick
faster at p < 0.05. Five pairs all won is the fewest that can (p = 1/32); more pairs are measured while the
answer is still open and the budget allows. A study asked for fewer pairs (``--validate-repeats``) decides by
"faster in every pair" alone. The spread of the runs is reported beside the figure, never a veto.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.progress import Log, quiet
from autotune.tuner.objective import ScanSpec, TrialFailed, measure

ALPHA = 0.05  # the sign test's level
MIN_PAIRS = 5  # the fewest pairs in which a one-sided sign test can reach p < 0.05 (all five won: 1/32)
MAX_PAIRS = 12  # more pairs are measured while the decision is open, up to this many
SAME_CONFIG_RUNS = 3  # runs of a pick that is the baseline itself: a median, nothing to decide
NOISY_SPREAD = 0.10  # runs spreading more than this are flagged as noisy beside the figure (never a veto)


def sign_test_p(wins: int, pairs: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more wins in ``pairs`` pairs if neither side is faster.

    Example:
        >>> sign_test_p(5, 5), round(sign_test_p(7, 8), 4)
        (0.03125, 0.0352)
    """
    if pairs <= 0:
        return 1.0
    return sum(math.comb(pairs, k) for k in range(max(wins, 0), pairs + 1)) / 2**pairs


@dataclass
class Candidate:
    """One configuration under validation, its measured runs, and how a run of it is sized."""

    name: str  # pick | default | current | a finalist's name
    config: EngineConfig
    trial_images_per_s: float | None = None
    runs: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)  # warm-up and drain seconds beyond the steady rate
    timed_rounds: int | None = None  # this candidate's timed rounds per run (None: the rule's own)

    @property
    def images_per_s(self) -> float:
        """Median of the validation runs."""
        return statistics.median(self.runs) if self.runs else 0.0

    @property
    def overhead_s(self) -> float:
        """Median seconds a run takes beyond its images at the steady rate (see ``Measurement.overhead_s``)."""
        return statistics.median(self.overheads) if self.overheads else 0.0

    @property
    def spread(self) -> float:
        """(max - min) / median of the runs."""
        med = self.images_per_s
        return (max(self.runs) - min(self.runs)) / med if self.runs and med > 0 else 0.0

    def spec(self, rule: ScanSpec) -> ScanSpec:
        """The scan of one run: the rule, with this candidate's own number of timed rounds."""
        return rule if self.timed_rounds is None else replace(rule, rounds=self.timed_rounds, min_timed_images=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "config": self.config.describe(),
            "trial_images_per_s": self.trial_images_per_s,
            "runs": [round(r, 3) for r in self.runs],
            "images_per_s": round(self.images_per_s, 3),
            "spread": round(self.spread, 4),
            "overhead_s": round(self.overhead_s, 3),
            "timed_rounds": self.timed_rounds,
        }


@dataclass(frozen=True)
class Comparison:
    """The pick against the baseline over interleaved pairs: wins, pairs, the sign test's p-value."""

    baseline: str  # the candidate's name: current | default
    wins: int
    pairs: int
    same_config: bool = False  # the pick is the baseline itself: nothing to compare
    min_pairs: int = MIN_PAIRS  # faster in every one of at least this many pairs also decides

    @property
    def p_value(self) -> float:
        """One-sided sign test p-value of the pick being faster."""
        return sign_test_p(self.wins, self.pairs)

    @property
    def beats(self) -> bool:
        """Whether the pick is faster: in every one of at least ``min_pairs`` pairs, or by the sign test at
        p < :data:`ALPHA` (with the default five pairs the first implies the second: p = 1/32)."""
        if self.same_config or self.pairs < 1:
            return False
        return (self.wins == self.pairs >= self.min_pairs) or self.p_value < ALPHA

    def open_with(self, more: int) -> bool:
        """Whether ``more`` pairs could still change the answer (the pick could still reach p < ALPHA)."""
        return not self.beats and not self.same_config and sign_test_p(self.wins + more, self.pairs + more) < ALPHA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "baseline": self.baseline,
            "wins": self.wins,
            "pairs": self.pairs,
            "p_value": round(self.p_value, 4),
            "alpha": ALPHA,
            "beats": self.beats,
            "same_config": self.same_config,
        }


def compare(pick: Candidate, baseline: Candidate, min_pairs: int = MIN_PAIRS) -> Comparison:
    """Pair the pick's runs with the baseline's, pass by pass; a win is a strictly faster run."""
    same = _key(pick.config) == _key(baseline.config)
    pairs = list(zip(pick.runs, baseline.runs, strict=False))
    return Comparison(baseline.name, sum(1 for p, b in pairs if p > b), len(pairs), same, min_pairs)


@dataclass
class Validation:
    """Validated candidates (pick first), the comparison that decides, and the rule each run followed."""

    candidates: list[Candidate]
    spec: ScanSpec
    comparison: Comparison | None = None
    seconds: float = 0.0

    @property
    def noisy(self) -> bool:
        """Whether the pick's runs spread more than :data:`NOISY_SPREAD` (reported, never a veto)."""
        return self.candidates[0].spread > NOISY_SPREAD

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (stored in the profile and the study)."""
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "rule": self.spec.describe(),
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "noisy": self.noisy,
            "seconds": round(self.seconds, 1),
        }


def validation_spec(trial_spec: ScanSpec, trial_span: int, rounds: int, min_images: int = 0) -> ScanSpec:
    """The longer scan: ``rounds`` timed rounds (``min_images`` at least) from image ``trial_span`` on.

    The trials used the images before ``trial_span``.
    """
    return replace(trial_spec, rounds=rounds, min_timed_images=min_images, offset=trial_span, scan_size=None)


def _key(config: EngineConfig) -> str:
    """Identity of a configuration for sharing runs."""
    return repr(sorted(config.to_dict().items()))


def run_passes(
    candidates: list[Candidate],
    rule: ScanSpec,
    passes: int,
    log: Log | None = None,
    *,
    label: str = "validation",
    more: Callable[[int], bool] | None = None,
) -> None:
    """Up to ``passes`` interleaved passes, every candidate one run each; ``more(done)``, asked before every pass
    after the first, ends them early when it returns False.

    Candidates with the same configuration share their runs (measured once per pass). A failed run counts as 0
    images/s, so an unreliable configuration cannot win.
    """
    say = log or quiet
    distinct: dict[str, Candidate] = {}
    for c in candidates:
        key = _key(c.config)
        if key in distinct:
            c.runs, c.overheads = distinct[key].runs, distinct[key].overheads  # the same lists: reported twice
        else:
            distinct[key] = c
    for r in range(passes):
        if r and more is not None and not more(r):
            return
        for c in distinct.values():
            try:
                m = measure(c.config, c.spec(rule))
                rate = m.images_per_s
                c.overheads.append(m.overhead_s)
            except TrialFailed as exc:
                say(f"{label} run of the {c.name} failed: {exc}")
                rate = 0.0
            c.runs.append(rate)
            say(f"{label} {r + 1}/{passes}: {c.name} {rate:.2f} images/s  [{c.config.describe()}]")


def validate(
    candidates: list[Candidate],
    rule: ScanSpec,
    *,
    baseline: str,
    seconds: float,
    min_pairs: int = MIN_PAIRS,
    max_pairs: int = MAX_PAIRS,
    limit_s: float | None = None,
    log: Log | None = None,
) -> Validation:
    """Measure the pick (first) against ``baseline`` and the others in interleaved passes, and decide.

    ``min_pairs`` passes always run (the fewest the sign test needs, even past ``seconds``); more, up to
    ``max_pairs``, only while the decision is still open and another pass (as long as the passes so far took on
    average) fits in what is left of ``seconds``. ``limit_s`` (what a study's ``--timeout`` leaves) ends the
    passes even below the floor; the first pass always runs.
    """
    say = log or quiet
    start = time.perf_counter()
    pick, base = candidates[0], next(c for c in candidates if c.name == baseline)

    def more(done: int) -> bool:
        """Whether to measure another pass: the floor, then while open and within budget."""
        spent = time.perf_counter() - start
        per_pass = spent / done  # measured: the estimate from the trials' figures is only for sizing the runs
        if limit_s is not None and spent + per_pass > limit_s:
            say(f"validation: the time left allows no pass after {done} (--timeout)")
            return False
        if done < min_pairs:
            return True
        if not compare(pick, base, min_pairs).open_with(max_pairs - done):
            return False
        fits = spent + per_pass <= seconds
        if not fits:
            say(f"validation: the decision is still open after {done} pairs, and the budget is spent")
        return fits

    if compare(pick, base).same_config:
        min_pairs = max_pairs = SAME_CONFIG_RUNS  # nothing to decide: the runs only give the figure
    asked = min_pairs
    run_passes(candidates, rule, max_pairs, say, more=more)
    return Validation(candidates, rule, compare(pick, base, asked), time.perf_counter() - start)
