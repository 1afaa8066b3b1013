"""What a study ends with: the pick, its figures, the decision about its use, and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.tuner.profile import REFERENCE_IMAGES, Profile, predict_seconds

PHASES = ("setup", "search", "final", "validation", "save")


@dataclass
class StudyOutcome:
    """The study's pick: its trial figure, its validated figure, the baseline's, and the profile it saved."""

    study_name: str
    storage: str
    best_trial: int
    config: EngineConfig
    trial_images_per_s: float
    images_per_s: float  # validated (the trial figure when validation was off)
    spread: float
    unstable: bool  # the pick's validation runs spread over 10%: reported, never a veto
    default_images_per_s: float | None
    current_images_per_s: float | None
    made_current: bool
    trials: dict[str, int]
    seconds: float
    profile: Profile | None
    profile_path: Path | None
    validation: dict[str, Any] = field(default_factory=dict)
    trial_images: int = 0
    overhead_s: float = 0.0  # warm-up and drain seconds beyond the steady rate (validation median)
    worker: str = ""  # this worker (host:pid)
    validated_by: str = ""  # the worker that validated and saved the pick (this one, or another of the study)
    measured_here: int = 0  # trials this worker measured
    decision: str = ""  # one line: whether the pick is in use, why, and what to do
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False  # --timeout ended the search before the trials asked for

    @property
    def validated_here(self) -> bool:
        """Whether this worker validated and saved the pick (else another worker of the study did)."""
        return self.validated_by == self.worker

    def predicted_images_per_s(self, images: int) -> float:
        """Predicted images/s of a scan of ``images`` images (start-up excluded, as `retrieve` reports it)."""
        return images / predict_seconds(images, self.images_per_s, self.overhead_s)

    def _common(self) -> dict[str, Any]:
        """The figures every worker reports."""
        return {
            "worker": self.worker,
            "validated_by": self.validated_by,
            "trials_measured_here": self.measured_here,
            "study": self.study_name,
            "storage": self.storage,
            "best_trial": self.best_trial,
            "config": self.config.describe(),
            "trial_images_per_s": round(self.trial_images_per_s, 3),
        }

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON; a worker that did not validate the pick reports no validated figure."""
        trials = {"trials_infeasible": 0, **{f"trials_{k}": v for k, v in self.trials.items()}}
        timing = {
            "seconds": round(self.seconds, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.phase_seconds.items()},
            "stopped_early": self.stopped_early,
        }
        if not self.validated_here:
            installed = {"profile": str(self.profile_path) if self.profile_path else None,
                         "profile_in_use": self.made_current}  # fmt: skip
            return {**self._common(), **trials, **timing, **installed}
        gain = self.images_per_s / self.default_images_per_s if self.default_images_per_s else None
        ratio = self.trial_images_per_s / self.images_per_s if self.images_per_s else None
        comparison = self.validation.get("comparison") or {}
        return {
            **self._common(),
            "images_per_s": round(self.images_per_s, 3),
            "trial_over_validated": round(ratio, 3) if ratio else None,
            "spread": round(self.spread, 4),
            "unstable": self.unstable,
            "default_images_per_s": round(self.default_images_per_s, 3) if self.default_images_per_s else None,
            "speedup_over_default": round(gain, 3) if gain else None,
            "current_profile_images_per_s": (
                round(self.current_images_per_s, 3) if self.current_images_per_s else None
            ),
            "baseline": comparison.get("baseline"),
            "pairs_won": comparison.get("wins"),
            "pairs": comparison.get("pairs"),
            "p_value": comparison.get("p_value"),
            "profile_in_use": self.made_current,
            "decision": self.decision,
            "overhead_s": round(self.overhead_s, 3),
            "predicted_seconds_500k": (
                round(predict_seconds(REFERENCE_IMAGES, self.images_per_s, self.overhead_s), 1)
                if self.images_per_s
                else None
            ),
            "max_trial_images": self.trial_images,
            **trials,
            **timing,
            "profile": str(self.profile_path) if self.profile_path else None,
        }
