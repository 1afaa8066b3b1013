"""The study's pick after the search: the decision about its use, and the profile it is saved as."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.engine.config import EngineConfig
from autotune.tuner.options import StudyOptions, StudySetup
from autotune.tuner.profile import Profile, guard_record, library_versions, save_profile
from autotune.tuner.search import TrialGuard
from autotune.tuner.storage import trial_value
from autotune.tuner.validation import ALPHA, Candidate, Validation

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

BASELINE_WORDS = {"current": "profile in use", "default": "safe default"}


@dataclass
class Verdict:
    """The pick's figures after validation (its trial figures without it), and whether it goes in use."""

    images_per_s: float
    overhead_s: float
    spread: float
    noisy: bool
    make_current: bool
    why: str  # the decision in words, with the figures
    validation: Validation | None = None
    by_name: dict[str, Candidate] = field(default_factory=dict)


def verdict_for(
    candidates: list[Candidate], validation: Validation | None, best: FrozenTrial, options: StudyOptions
) -> Verdict:
    """The pick's validated figures, and whether it goes in use: it beats the baseline (the profile in use, or
    the safe default) in the interleaved pairs, or ``--save-profile`` forces it. A noisy machine is reported,
    never a veto on its own."""
    pick = candidates[0]
    by_name = {c.name: c for c in candidates}
    if validation is None or validation.comparison is None:
        figure = trial_value(best)
        overhead = float(best.user_attrs.get("overhead_s") or 0.0)
        in_use = options.save_profile or "current" not in by_name
        why = "is not validated (--validate-repeats 0), and " + (
            "no profile was in use" if in_use else "the profile in use stays"
        )
        return Verdict(figure, overhead, 0.0, False, in_use, why, validation, by_name)
    cmp = validation.comparison
    base = by_name[cmp.baseline]
    words = BASELINE_WORDS.get(cmp.baseline, cmp.baseline)
    figures = (
        f"{pick.images_per_s:.1f} vs {base.images_per_s:.1f} images/s median, faster in {cmp.wins} of "
        f"{cmp.pairs} interleaved pairs (sign test p = {cmp.p_value:.3f})"
    )
    if cmp.same_config:
        in_use = options.save_profile or cmp.baseline == "default"
        why = f"is the {words} itself ({pick.images_per_s:.1f} images/s)"
    elif cmp.beats:
        in_use, why = True, f"beats the {words}: {figures}"
        if (pick.config.cpu_backend, pick.config.gpu_backend) != (base.config.cpu_backend, base.config.gpu_backend):
            # The index is keyed by the embedding recipe: another backend's embeddings go to another index.
            why += "; its backend keys a new index: the next `autotune retrieve` builds it"
    else:
        in_use = options.save_profile
        why = f"does not beat the {words} at p < {ALPHA}: {figures}"
        if options.save_profile:
            why += "; in use anyway (--save-profile)"
    noisy = validation.noisy
    if noisy:
        why += f"; its runs spread {pick.spread:.0%} (a noisy machine)"
    return Verdict(pick.images_per_s, pick.overhead_s, pick.spread, noisy, in_use, why, validation, by_name)


def save_pick(
    setup: StudySetup,
    best: FrozenTrial,
    config: EngineConfig,
    verdict: Verdict,
    trial_guard: TrialGuard,
    phase_seconds: dict[str, float],
) -> tuple[Profile, Path]:
    """Save the pick's profile (in use or not, as the verdict says) with the guard it passed."""
    profile = pick_profile(setup, best, config, verdict)
    profile.phase_seconds = {k: round(v, 1) for k, v in phase_seconds.items()}
    checks = trial_guard.checks(config)  # cached from the trials: checked on this very model
    if checks:
        profile.guard = guard_record(checks)
    path = save_profile(profile, make_current=verdict.make_current)
    return profile, path


def decision_line(profile: Profile | None, config: EngineConfig, verdict: Verdict) -> str:
    """The study's last line: the pick, whether it is in use and why, and the command that changes it."""
    head = f"profile {profile.id}: " if profile is not None else "the pick: "
    text = f"{head}{config.describe()} at {verdict.images_per_s:.1f} images/s validated"
    if verdict.make_current:
        return f"{text}; in use: it {verdict.why}"
    use = f"; to use it anyway: autotune profile use {profile.id}" if profile is not None else ""
    return f"{text}; saved, not in use: it {verdict.why}{use}"


def pick_profile(setup: StudySetup, best: FrozenTrial, config: EngineConfig, verdict: Verdict) -> Profile:
    """The profile of a validated pick, with its provenance and the guard it passed."""
    validation = verdict.validation
    return Profile(
        machine_id=setup.machine.machine_id,
        machine=setup.machine.summary(),
        config=config,
        images_per_s=verdict.images_per_s,
        spread=verdict.spread,
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
        validated_images_per_s=verdict.images_per_s if validation else None,
        validation=validation.to_dict() if validation else {},
        unstable=verdict.noisy,
        overhead_s=verdict.overhead_s,
    )
