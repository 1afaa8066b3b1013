"""The final's choice of finalists: the best of each kind, then the best trial's layout neighbours."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna

from autotune.tuner.final import best_of_each_kind, finalists, kind, layout_neighbours
from autotune.tuner.space import load_space

SPACE = "cpu"


def _setup(cores: int) -> Any:
    space = load_space(SPACE, machine_facts={"cores": cores, "physical_cores": cores, "memory_gb": 16, "gpus": 0})
    return SimpleNamespace(space=space, machine=SimpleNamespace(logical_cores=cores, gpu_count=0))


def _trial(number: int, value: float, **params: Any) -> optuna.trial.FrozenTrial:
    base = {
        "producers": 1,
        "cpu_models": 1,
        "cpu_threads": 2,
        "cpu_batch": 32,
        "scheduling": "dynamic",
        "pin_cores": False,
        "cpu_backend": "eager",
    }
    setup = _setup(2)
    t = optuna.trial.create_trial(params={**base, **params}, distributions=setup.space.distributions(), value=value)
    t.number = number
    return t


def test_best_of_each_kind_keeps_one_trial_per_backend_and_layout() -> None:
    """Batch-size neighbours of one kind count once; the best of each kind, best first, ``top`` at most."""
    trials = [
        _trial(0, 60.0, cpu_backend="onnx-int8", cpu_batch=61),
        _trial(1, 58.0, cpu_backend="onnx-int8", cpu_batch=56),  # same kind as trial 0: left out
        _trial(2, 40.0, cpu_backend="eager", cpu_batch=16),
        _trial(3, 30.0, cpu_backend="onnx-int8", cpu_models=2, cpu_threads=1),
        _trial(4, 10.0, cpu_backend="eager", cpu_batch=8),
    ]
    assert [t.number for t in best_of_each_kind(trials, 3)] == [0, 2, 3]
    assert kind(trials[0].params) == (("cpu_backend", "onnx-int8"), ("cpu_models", 1), ("cpu_threads", 2))


def test_layout_neighbours_respect_the_cores_and_the_constraints() -> None:
    """On 2 cores 1x2 and 2x1 neighbour each other and 1x1 reaches both; on 8 cores 2x4 reaches 4x2 and 1x8."""
    two = _setup(2)
    base = dict(_trial(0, 1.0).params)

    def layouts(setup: Any, m: int, t: int) -> set[tuple[int, int]]:
        return {
            (p["cpu_models"], p["cpu_threads"])
            for p in layout_neighbours(setup, {**base, "cpu_models": m, "cpu_threads": t})
        }

    assert layouts(two, 1, 2) == {(2, 1)}
    assert layouts(two, 2, 1) == {(1, 2)}
    assert layouts(two, 1, 1) == {(2, 1), (1, 2)}
    assert layouts(_setup(8), 2, 4) == {(4, 2), (1, 8)}
    # Pinning needs a core per producer and model thread: on 2 cores no full-core neighbour of a pinned 1x1 fits.
    assert layouts(two, 1, 1) and not layout_neighbours(
        two, {**base, "cpu_models": 1, "cpu_threads": 1, "pin_cores": True}
    )


def test_finalists_add_the_untried_layouts_of_each_kind() -> None:
    """A layout of a finalist's backend that has a trial of its own comes with its own best batch, not as a
    variant; each kind's untried layouts come after the best of the kinds."""
    setup = _setup(2)
    trials = [
        _trial(0, 60.0, cpu_backend="onnx-int8", cpu_batch=61),
        _trial(1, 40.0, cpu_backend="eager", cpu_batch=16),
    ]
    chosen = finalists(setup, trials, 3)
    assert [(f.trial.number if f.trial else None, f.why) for f in chosen] == [
        (0, "best of its kind"),
        (1, "best of its kind"),
        (None, "layout of trial 0"),
        (None, "layout of trial 1"),
    ]
    variant = chosen[2].params
    assert (variant["cpu_models"], variant["cpu_threads"], variant["cpu_batch"], variant["cpu_backend"]) == (
        2,
        1,
        61,
        "onnx-int8",
    )
    trials.append(_trial(2, 20.0, cpu_backend="onnx-int8", cpu_models=2, cpu_threads=1, cpu_batch=16))
    chosen = finalists(setup, trials, 3)
    assert [(f.trial.number if f.trial else None, f.why) for f in chosen] == [
        (0, "best of its kind"),
        (1, "best of its kind"),
        (2, "best of its kind"),
        (None, "layout of trial 1"),
    ]
