"""The study's candidate samplers by name, built the way the study (and the replay that compares them) runs them."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from autotune.errors import ConfigError

if TYPE_CHECKING:  # importing this module must not import Optuna
    from optuna.samplers import BaseSampler

# "hill" is the replay's own hill climb (autotune.tuner.replay), not an Optuna sampler.
SAMPLERS = ("tpe", "gp", "random", "hill")


def startup_trials(n_trials: int) -> int:
    """Random start-up trials before a model-based sampler takes over (the study's rule for TPE)."""
    return min(8, max(2, n_trials // 3))


def make_sampler(name: str, seed: int | None, n_trials: int) -> BaseSampler:
    """An Optuna sampler by name (``tpe``, ``gp`` or ``random``), seeded, for a study of ``n_trials`` trials.

    ``tpe`` is the study's sampler as configured today (multivariate, start-up trials by :func:`startup_trials`);
    ``gp`` gets the same number of start-up trials (its own default is 10) so that a comparison measures the
    model, not the length of the random warm-up. Optuna is imported only when a sampler is made.

    Example:
        >>> sampler = make_sampler("tpe", seed=0, n_trials=30)
        >>> optuna.create_study(direction="maximize", sampler=sampler)
    """
    import optuna

    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    # Multivariate TPE and GP are marked experimental; the warning says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(n_trials), multivariate=True)
        if name == "gp":
            # The GP fallback warning fires on every start-up trial it does not model; it is expected here.
            return optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=startup_trials(n_trials), warn_independent_sampling=False
            )
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler {name!r} is the replay's hill climb, not an Optuna sampler (see autotune.tuner.replay)")
