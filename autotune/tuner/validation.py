"""The study's last word: the pick, the default and the profile in use, measured again on unseen images.

The trial figure that selected the pick is biased upwards (it won a noisy contest), so the figure a profile
keeps comes from here: a longer scan of images the trials did not use, each candidate measured several
times, interleaved so that drifts of the machine hit all of them alike, and the median kept.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.progress import Log, quiet
from autotune.tuner.objective import ScanSpec, TrialFailed, measure

MAX_SPREAD = 0.10  # a pick whose runs spread more than this is measured again, then called unstable


@dataclass
class Candidate:
    """One configuration under validation and its measured runs."""

    name: str  # pick | default | current
    config: EngineConfig
    trial_images_per_s: float | None = None
    runs: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)  # warm-up and drain seconds beyond the steady rate

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
        }


@dataclass
class Validation:
    """Validated candidates (pick first) and whether the pick's runs agreed."""

    candidates: list[Candidate]
    spec: ScanSpec
    unstable: bool

    def get(self, name: str) -> Candidate | None:
        """The candidate called ``name``, if it was validated."""
        return next((c for c in self.candidates if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (stored in the profile)."""
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "rule": self.spec.describe(),
            "unstable": self.unstable,
        }


def validation_spec(trial_spec: ScanSpec, trial_span: int, rounds: int, min_images: int = 0) -> ScanSpec:
    """The longer scan: ``rounds`` timed rounds (``min_images`` at least) from image ``trial_span`` on.

    The trials used the images before ``trial_span``.
    """
    return replace(trial_spec, rounds=rounds, min_timed_images=min_images, offset=trial_span, scan_size=None)


def validate(
    candidates: list[Candidate],
    spec: ScanSpec,
    repeats: int = 3,
    log: Log | None = None,
    *,
    again: bool = True,
) -> Validation:
    """Measure every candidate ``repeats`` times, interleaved; the pick (first) again if its runs disagree
    (unless ``again`` is False).

    Candidates with the same configuration share their runs (measured once per round). A failed run counts
    as 0 images/s, so an unreliable configuration cannot win.
    """
    say = log or quiet
    distinct: dict[str, Candidate] = {}
    for c in candidates:
        key = repr(sorted(c.config.to_dict().items()))
        if key in distinct:
            # Same lists: measured once, reported under both names.
            c.runs, c.overheads = distinct[key].runs, distinct[key].overheads
        else:
            distinct[key] = c

    def one_pass(label: str) -> None:
        """``repeats`` rounds over the distinct candidates, each run logged under ``label``."""
        for r in range(repeats):
            for c in distinct.values():
                try:
                    m = measure(c.config, spec)
                    rate = m.images_per_s
                    c.overheads.append(m.overhead_s)
                except TrialFailed as exc:
                    say(f"validation run of the {c.name} failed: {exc}")
                    rate = 0.0
                c.runs.append(rate)
                say(f"{label} {r + 1}/{repeats}: {c.name} {rate:.2f} images/s  [{c.config.describe()}]")

    one_pass("validation")
    pick = candidates[0]
    if again and pick.spread > MAX_SPREAD:
        say(f"the pick's validation runs spread {pick.spread:.0%} (over {MAX_SPREAD:.0%}): measuring again")
        one_pass("validation (again)")
    return Validation(candidates, spec, unstable=pick.spread > MAX_SPREAD)
