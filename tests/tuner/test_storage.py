"""Shared-study bookkeeping on a real SQLite storage: the atomic claim, the measured tally, the run's goal."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from autotune.errors import ConfigError
from autotune.tuner.search import GOAL_KEY, is_measured, tally, trial_goal
from autotune.tuner.storage import claim, writer_storage


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    """A fresh study in a SQLite file, and the file's URL."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    return optuna.create_study(study_name="s", storage=writer_storage(url), direction="maximize"), url


def _add(study: optuna.Study, state: TrialState, x: int, **attrs: object) -> None:
    """Record a finished trial with the given state and user attributes."""
    value = float(x) if state == TrialState.COMPLETE else None
    study.add_trial(
        create_trial(state=state, value=value, params={"x": x}, distributions={"x": IntDistribution(0, 99)},
                     user_attrs=dict(attrs))
    )  # fmt: skip


def test_a_claim_has_exactly_one_winner_and_everyone_reads_it(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    first, second = writer_storage(url), writer_storage(url)  # two workers, two connections
    won, holder = claim(first, "s", "claim:pick:4", {"worker": "a:1"})
    assert won and holder["worker"] == "a:1" and holder["at"]
    lost, seen = claim(second, "s", "claim:pick:4", {"worker": "b:2"})
    assert not lost and seen == holder
    assert study.user_attrs["claim:pick:4"]["worker"] == "a:1"  # the claim stays in the study
    assert claim(second, "s", "claim:pick:8", {"worker": "b:2"})[0]  # another run of the study: another claim


def test_measured_trials_exclude_free_and_dead_ones(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    _add(study, TrialState.COMPLETE, 1)
    _add(study, TrialState.COMPLETE, 2, repeat_of=0)  # answered from the study: no scan
    _add(study, TrialState.PRUNED, 3, infeasible=["too many threads"])
    _add(study, TrialState.PRUNED, 4)  # cut by the pruner after a scan
    _add(study, TrialState.FAIL, 5, fail_reason="engine crashed")
    _add(study, TrialState.FAIL, 6)  # a dead worker's trial: queued again, measured by another
    _add(study, TrialState.COMPLETE, 7, final_variant_of=0)
    study.enqueue_trial({"x": 8})
    assert [is_measured(t) for t in study.trials if t.state != TrialState.WAITING] == [
        True, False, False, True, True, False, False
    ]  # fmt: skip
    assert tally(study) == type(tally(study))(measured=3, running=0, waiting=1)


def test_a_worker_joins_a_run_under_way_else_starts_one(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    lines: list[str] = []
    assert trial_goal(study, 4, lines.append) == 4 and study.user_attrs[GOAL_KEY] == 4
    _add(study, TrialState.COMPLETE, 1)
    assert trial_goal(study, 10, lines.append) == 4  # joins: --trials is the total of the run under way
    assert "1 of 4 trials measured" in lines[-1]
    for x in range(2, 5):
        _add(study, TrialState.COMPLETE, x)
    assert trial_goal(study, 2, lines.append) == 6  # the run ended: a new one, 2 more


def test_a_heartbeat_under_a_second_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--heartbeat must be at least 1 second"):
        writer_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_s=0.5)
