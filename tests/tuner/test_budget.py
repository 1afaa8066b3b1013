"""The post-search budget on recorded throughputs: seconds, not images, and never fewer pairs than the rule."""

from __future__ import annotations

import pytest

from autotune.tuner import budget
from autotune.tuner.budget import RunCost

# Recorded on the 2-core AMD EPYC: openvino-int8 2 x 1 batch 48, and the eager 1 x 2 batch 32 safe default.
FAST = RunCost(images_per_s=160.0, fixed_s=1.8, round_images=96)
SLOW = RunCost(images_per_s=20.0, fixed_s=3.4, round_images=32)


def test_a_slow_candidate_gets_fewer_rounds_never_fewer_than_the_floor() -> None:
    rounds = budget.timed_rounds([FAST, SLOW], seconds=120.0, passes=8, max_rounds=12)
    assert rounds[0] > rounds[1] >= budget.MIN_TIMED_ROUNDS
    # The same timed seconds each: the slow one's rounds take longer, so it has fewer of them.
    assert abs(rounds[0] * FAST.round_s - rounds[1] * SLOW.round_s) <= max(FAST.round_s, SLOW.round_s)
    tight = budget.timed_rounds([FAST, SLOW], seconds=1.0, passes=5, max_rounds=12)
    assert tight == [budget.MIN_TIMED_ROUNDS, budget.MIN_TIMED_ROUNDS]
    assert budget.timed_rounds([FAST], seconds=1e6, passes=5, max_rounds=12) == [12]


def test_the_post_search_budget_is_a_share_of_the_search_with_the_rules_floor() -> None:
    floor = 5 * budget.pass_seconds([FAST, SLOW], [2, 2])
    assert budget.post_search_seconds(600.0, floor, None) == pytest.approx(600.0 * budget.POST_SHARE)
    assert budget.post_search_seconds(30.0, floor, None) == pytest.approx(floor)  # never under the floor
    assert budget.post_search_seconds(600.0, floor, 40.0) == pytest.approx(40.0)  # a --timeout wins
    assert budget.post_search_seconds(600.0, floor, -3.0) == 0.0


def test_the_final_runs_only_beside_the_validations_floor() -> None:
    assert budget.final_seconds(100.0, final_floor_s=30.0, validation_floor_s=60.0) == pytest.approx(35.0)
    assert budget.final_seconds(80.0, final_floor_s=30.0, validation_floor_s=60.0) is None
    assert budget.final_seconds(100.0, final_floor_s=0.0, validation_floor_s=10.0) is None


def test_costs_from_a_trials_figures() -> None:
    cost = RunCost.from_attrs({"startup_s": 0.5, "warmup_s": 1.0, "drain_s": 1.5}, 20.0, 32)
    assert cost.fixed_s == pytest.approx(3.0) and cost.seconds(2) == pytest.approx(budget.RUN_OVERHEAD_S + 3.0 + 3.2)
    assert RunCost.from_attrs({}, 20.0, 32).fixed_s == budget.DEFAULT_FIXED_S
