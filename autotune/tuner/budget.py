"""Seconds for the study's phases after the search: the final and the validation sized from measured rates.

A run's cost is its start-up, warm-up and drain (fixed) plus its timed rounds at the configuration's rate, all
measured in its trial. Sizing runs in seconds rather than images keeps a slow candidate from costing the most
exactly when the study is short: it gets fewer timed rounds, never fewer pairs than the decision rule needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The part of the search's own seconds that the final and the validation may take together: 0.3, so that they
# stay under a quarter of the study (the floor of the decision rule's pairs aside).
POST_SHARE = 0.3
FINAL_SHARE = 0.35  # of the post-search budget, for the final when it fits beside the validation's floor
MIN_TIMED_ROUNDS = 2  # a run's fewest timed rounds: one round is all noise
DEFAULT_FIXED_S = 5.0  # start-up, warm-up and drain of a configuration never measured here (a guess)
# What a run costs beyond its trial's start-up, warm-up and drain: the request to the trial process, the scan's
# set-up and teardown. The 30-trial study's validation passes ran about this much over their estimate each.
RUN_OVERHEAD_S = 0.5


@dataclass(frozen=True)
class RunCost:
    """What one timed run of a configuration costs: fixed seconds, and seconds per timed round."""

    images_per_s: float
    fixed_s: float  # start-up (engine and replicas), warm-up and drain rounds
    round_images: int

    @property
    def round_s(self) -> float:
        """Seconds of one timed round at the measured rate."""
        return self.round_images / self.images_per_s if self.images_per_s > 0 else float("inf")

    def seconds(self, timed_rounds: int) -> float:
        """Seconds of one run of ``timed_rounds`` timed rounds."""
        return RUN_OVERHEAD_S + self.fixed_s + timed_rounds * self.round_s

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], images_per_s: float, round_images: int) -> RunCost:
        """The cost of a configuration from its trial's recorded figures (a guess for the parts not recorded)."""
        parts = [attrs.get(k) for k in ("startup_s", "warmup_s", "drain_s")]
        fixed = sum(float(p) for p in parts if p is not None) if any(p is not None for p in parts) else DEFAULT_FIXED_S
        return cls(images_per_s=max(images_per_s, 1e-6), fixed_s=fixed, round_images=max(round_images, 1))


def pass_seconds(costs: Sequence[RunCost], rounds: Sequence[int]) -> float:
    """Seconds of one interleaved pass: every candidate one run."""
    return sum(c.seconds(r) for c, r in zip(costs, rounds, strict=True))


def timed_rounds(costs: Sequence[RunCost], seconds: float, passes: int, max_rounds: int) -> list[int]:
    """Timed rounds per candidate so that ``passes`` interleaved passes fit ``seconds``: the same timed seconds
    for each candidate (a slow one gets fewer rounds), at least :data:`MIN_TIMED_ROUNDS`, at most ``max_rounds``.

    Example:
        >>> fast, slow = RunCost(150.0, 1.0, 96), RunCost(20.0, 3.0, 32)
        >>> timed_rounds([fast, slow], seconds=60.0, passes=5, max_rounds=12)
        [6, 2]
    """
    per_pass = seconds / max(passes, 1) - sum(RUN_OVERHEAD_S + c.fixed_s for c in costs)
    timed_each = per_pass / max(len(costs), 1)
    out = []
    for c in costs:
        fit = math.floor(timed_each / c.round_s) if c.round_s > 0 and math.isfinite(c.round_s) else MIN_TIMED_ROUNDS
        out.append(min(max(fit, MIN_TIMED_ROUNDS), max(max_rounds, MIN_TIMED_ROUNDS)))
    return out


def post_search_seconds(search_s: float, floor_s: float, left_s: float | None) -> float:
    """The final's and the validation's seconds together: a share of the search, never under the decision
    rule's floor, and never past what a ``--timeout`` leaves (``left_s``), which wins over the floor."""
    budget = max(POST_SHARE * search_s, floor_s)
    return budget if left_s is None else max(min(budget, left_s), 0.0)


def final_seconds(post_s: float, final_floor_s: float, validation_floor_s: float) -> float | None:
    """Seconds for the final, or None when it does not fit beside the validation's floor (the best trial is the
    pick)."""
    if final_floor_s <= 0 or post_s < final_floor_s + validation_floor_s:
        return None
    return min(max(final_floor_s, FINAL_SHARE * post_s), post_s - validation_floor_s)
