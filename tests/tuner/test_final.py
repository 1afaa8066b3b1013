"""The final's choice of finalists: the best of each kind (backend and replica layout), near ties only."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna

from autotune.tuner.final import WITHIN, best_of_each_kind, finalists, kind
from autotune.tuner.space import load_space

SPACE = "cpu"


def _setup(cores: int) -> Any:
    space = load_space(SPACE, machine_facts={"cores": cores, "physical_cores": cores, "memory_gb": 16, "gpus": 0})
    return SimpleNamespace(space=space, machine=SimpleNamespace(logical_cores=cores, gpu_count=0))


def _trial(number: int, value: float, **params: Any) -> optuna.trial.FrozenTrial:
    base = {
        "producers": 1,
        "cpu_layout": "1x2",
        "cpu_batch": 32,
        "scheduling": "dynamic",
        "cpu_backend": "eager",
    }
    setup = _setup(2)
    dists = {k: v for k, v in setup.space.distributions().items() if k in {**base, **params}}
    t = optuna.trial.create_trial(params={**base, **params}, distributions=dists, value=value)
    t.number = number
    return t


def test_best_of_each_kind_keeps_one_trial_per_backend_and_layout() -> None:
    """Batch-size neighbours of one kind count once; the best of each kind, best first, ``top`` at most."""
    trials = [
        _trial(0, 60.0, cpu_backend="onnx-int8", cpu_batch=61),
        _trial(1, 58.0, cpu_backend="onnx-int8", cpu_batch=56),  # same kind as trial 0: left out
        _trial(2, 50.0, cpu_backend="eager", cpu_batch=16),
        _trial(3, 45.0, cpu_backend="onnx-int8", cpu_layout="2x1"),
        _trial(4, 10.0, cpu_backend="eager", cpu_batch=8),
    ]
    assert [t.number for t in best_of_each_kind(trials, 3)] == [0, 2, 3]
    assert kind(trials[0].params) == (("cpu_backend", "onnx-int8"), ("cpu_layout", "1x2"))


def test_finalists_are_near_ties_of_distinct_kinds() -> None:
    """A kind far slower than the best trial is no near tie a drift could have decided: it is left out."""
    trials = [
        _trial(0, 60.0, cpu_backend="onnx-int8"),
        _trial(1, 45.0, cpu_backend="eager", cpu_layout="2x1"),
        _trial(2, 60.0 * WITHIN - 1, cpu_backend="eager"),
    ]
    chosen = finalists(trials, 3)
    assert [f.trial.number for f in chosen] == [0, 1]
    assert chosen[1].params["cpu_layout"] == "2x1"
    assert finalists([], 3) == []
