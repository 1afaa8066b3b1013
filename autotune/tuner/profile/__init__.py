"""Per-machine profiles: the best configuration found, with where it came from, kept as a history.

Layout under :func:`profiles_dir` (``$AUTOTUNE_STUDIES/profiles``)::

    <machine-id>/<id>.json      one file per saved pick, never overwritten; ids sort by save time
    <machine-id>/current.json   {architecture key: id in use}, with the readable architecture text
    <machine-id>.json           a format-1 (legacy) profile: listed, never made current automatically

A profile is only ever chosen for the model architecture it was tuned on: a speed measured on the small
demo CLIP says nothing about ViT-B/32, so ``find_profile("auto", model=...)`` returns None rather than
another architecture's profile. A profile off the eager fp32 reference only runs on weights its recorded
accuracy-guard checks passed on (:func:`guard_ok_for`).

Modules: ``_profile`` (the record, ids, labels, predictions), ``_store`` (history and current pointers),
``_choose`` (resolving ``auto``, ids and files), ``_guard`` (the accuracy policy).

Example:
    >>> from autotune.tuner.profile import find_profile
    >>> prof = find_profile("auto", model="synthetic:tiny")  # doctest: +SKIP
    >>> prof.config.describe(), prof.predicted_seconds_500k  # doctest: +SKIP
"""

from __future__ import annotations

from autotune.tuner.profile._choose import check_profile, find_profile, model_arch
from autotune.tuner.profile._guard import guard_ok_for, guard_record, verify_profile
from autotune.tuner.profile._profile import (
    LEGACY_TAG,
    PROFILE_FORMAT,
    REFERENCE_IMAGES,
    Profile,
    arch_key,
    arch_short,
    library_versions,
    new_profile_id,
    predict_seconds,
    profiles_dir,
    short_config,
    studies_dir,
)
from autotune.tuner.profile._store import (
    CURRENT_FILE,
    best_unused,
    current_profile,
    history,
    list_profiles,
    load_profile,
    machine_folder,
    profile_path,
    save_profile,
    use_profile,
)

__all__ = [
    "CURRENT_FILE",
    "LEGACY_TAG",
    "PROFILE_FORMAT",
    "REFERENCE_IMAGES",
    "Profile",
    "arch_key",
    "arch_short",
    "best_unused",
    "check_profile",
    "current_profile",
    "find_profile",
    "guard_ok_for",
    "guard_record",
    "history",
    "library_versions",
    "list_profiles",
    "load_profile",
    "machine_folder",
    "model_arch",
    "new_profile_id",
    "predict_seconds",
    "profile_path",
    "profiles_dir",
    "save_profile",
    "short_config",
    "studies_dir",
    "use_profile",
    "verify_profile",
]
