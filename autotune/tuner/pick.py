"""The study's pick after the search: its validation verdict, and the profile it is saved as."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.engine.config import EngineConfig
from autotune.progress import Log
from autotune.tuner.options import StudyOptions, StudySetup
from autotune.tuner.profile import (
    Profile,
    guard_record,
    library_versions,
    save_profile,
)
from autotune.tuner.search import TrialGuard
from autotune.tuner.storage import trial_value
from autotune.tuner.validation import Candidate, Validation

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def candidates_for(
    setup: StudySetup, best: FrozenTrial, default: FrozenTrial | None, current: Profile | None
) -> list[Candidate]:
    """The pick first, then the default (trial 0) and the profile in use, each with its trial figure."""
    space = setup.space
    out = [Candidate("pick", space.to_config(best.params), trial_value(best))]
    if default is not None:
        out.append(Candidate("default", space.to_config(default.params), trial_value(default)))
    if current is not None:
        out.append(Candidate("current", current.config, current.trial_images_per_s))
    return out


@dataclass
class Verdict:
    """The pick's figures after validation (its trial figures without it), and whether it goes in use."""

    images_per_s: float
    overhead_s: float
    spread: float
    unstable: bool
    make_current: bool
    validation: Validation | None = None
    by_name: dict[str, Candidate] = field(default_factory=dict)


def verdict_for(
    candidates: list[Candidate], validation: Validation | None, best: FrozenTrial, options: StudyOptions, say: Log
) -> Verdict:
    """The pick's validated figures, and whether it beats the profile in use (an unstable pick never does)."""
    pick = candidates[0]
    by_name = {c.name: c for c in candidates}
    validated = pick.images_per_s if validation else trial_value(best)
    overhead = pick.overhead_s if validation else float(best.user_attrs.get("overhead_s") or 0.0)
    spread = pick.spread if validation else 0.0
    unstable = bool(validation and validation.unstable)
    cur = by_name.get("current")
    beats_current = cur is None or (validation is not None and validated > cur.images_per_s)
    make_current = options.save_profile or beats_current
    if unstable:
        say(f"the pick is unstable: its validation runs spread {spread:.0%}; it is saved but not put in use")
        make_current = options.save_profile
    return Verdict(validated, overhead, spread, unstable, make_current, validation, by_name)


def save_pick(
    setup: StudySetup, best: FrozenTrial, config: EngineConfig, verdict: Verdict, trial_guard: TrialGuard, say: Log
) -> tuple[Profile, Path]:
    """Save the pick's profile (in use or not, as the verdict says) with the guard it passed."""
    profile = pick_profile(
        setup, best, config, verdict.images_per_s, verdict.spread, verdict.validation, verdict.unstable
    )
    profile.overhead_s = verdict.overhead_s
    checks = trial_guard.checks(config)  # cached from the trials: checked on this very model
    if checks:
        profile.guard = guard_record(checks)
    path = save_profile(profile, make_current=verdict.make_current)
    cur = verdict.by_name.get("current")
    kept = f"the profile in use ({cur.images_per_s:.1f} images/s) stays" if cur else "not put in use"
    in_use = "in use" if verdict.make_current else f"kept; {kept}"
    say(f"profile {profile.id}: {config.describe()} at {verdict.images_per_s:.1f} images/s validated ({in_use})")
    return profile, path


def pick_profile(
    setup: StudySetup,
    best: FrozenTrial,
    config: EngineConfig,
    validated: float,
    spread: float,
    validation: Validation | None,
    unstable: bool,
) -> Profile:
    """The profile of a validated pick, with its provenance and the guard it passed."""
    return Profile(
        machine_id=setup.machine.machine_id,
        machine=setup.machine.summary(),
        config=config,
        images_per_s=validated,
        spread=spread,
        study=setup.name,
        storage=setup.url,
        trial=best.number,
        scan_size=setup.trial_images,
        model=setup.model,
        model_arch=setup.arch,
        dataset=setup.dataset,
        dataset_fingerprint=setup.source.fingerprint(),
        device=setup.space.device,
        versions=library_versions(),
        rechecks=list(validation.candidates[0].runs) if validation else [],
        startup_s=best.user_attrs.get("startup_s"),
        backend_setup={"replicas": (best.user_attrs.get("extra") or {}).get("backend_setup", [])},
        trial_images_per_s=trial_value(best),
        validated_images_per_s=validated if validation else None,
        validation=validation.to_dict() if validation else {},
        unstable=unstable,
    )
