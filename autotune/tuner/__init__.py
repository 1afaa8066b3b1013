"""The tuner: search spaces, the measured objective, the Optuna study, per-machine profiles and reports."""

from __future__ import annotations

from autotune.tuner.objective import ScanSpec, measure
from autotune.tuner.profile import Profile, find_profile, list_profiles, load_profile, save_profile
from autotune.tuner.report import serve_dashboard, study_report, top_text
from autotune.tuner.space import SearchSpace, load_space
from autotune.tuner.study import StudyOptions, StudyOutcome, run_study

__all__ = [
    "Profile", "ScanSpec", "SearchSpace", "StudyOptions", "StudyOutcome", "find_profile", "list_profiles",
    "load_profile", "load_space", "measure", "run_study", "save_profile", "serve_dashboard", "study_report",
    "top_text",
]
