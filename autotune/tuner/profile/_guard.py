"""The profiles' accuracy policy: which recorded guard checks let a profile run on a model, and re-checking.

The checks themselves (reference embeddings, cosines, overlaps) are :mod:`autotune.models.guard`'s; a profile
keeps their outcome in its ``guard`` dict, and a profile off the eager fp32 reference may only run on weights
its recorded checks passed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.data import ImageSource, open_source
from autotune.engine.config import config_calibration
from autotune.models.guard import (
    DEFAULT_SAMPLE,
    DEFAULT_THRESHOLD,
    GuardResult,
    build_reference,
    check_backend,
    check_config,
    non_reference_parts,
)
from autotune.tuner.profile._profile import Profile


def guard_record(checked: Sequence[GuardResult]) -> dict[str, Any]:
    """The ``guard`` dict a profile keeps (what :func:`guard_ok_for` reads) for a set of checks.

    The top-level figures are the worst check's (the first failed one, else the lowest cosine), with the CPU
    backend named when the profile runs both; every check is listed under ``checked``.

    Example:
        >>> guard_record([check_backend(ref, model, "int8", "fp32")])["passed"]  # doctest: +SKIP
        True
    """
    failed = [r for r in checked if not r.passed]
    record = (failed[0] if failed else min(checked, key=lambda r: r.min_cosine)).profile_guard()
    cpu = next((r for r in checked if r.device == "cpu"), None)
    if cpu is not None:  # the top-level backend is the CPU one when the profile runs both
        record["backend"], record["precision"] = cpu.backend, cpu.precision
    record["passed"] = all(r.passed for r in checked)
    record["min_cosine"] = round(min(r.min_cosine for r in checked), 6)
    record["checked"] = [r.profile_guard() for r in checked]
    return record


def guard_ok_for(profile: Profile, weights_hash: str) -> bool:
    """Whether a profile may run on the model with ``weights_hash``: its guard passed there, or needs none.

    A profile on the eager fp32 reference (CPU replicas on ``eager``, GPU replicas at fp32) needs no check.
    Otherwise its ``guard`` must record a passed check on these very weights for every non-reference part.

    Example:
        >>> guard_ok_for(profile_on_eager, "0123456789abcdef")  # doctest: +SKIP
        True
    """
    parts = non_reference_parts(profile.config)
    if not parts:
        return True
    guard = profile.guard or {}
    if guard.get("weights_hash") != weights_hash or not guard.get("passed"):
        return False
    checked = guard.get("checked") or [guard]
    for kind, backend, precision in parts:
        ok = any(
            entry.get("passed")
            and entry.get("weights_hash", guard.get("weights_hash")) == weights_hash
            and entry.get("backend") == backend
            and entry.get("precision") == precision
            and str(entry.get("device", "cpu")).split(":")[0] == kind
            for entry in checked
        )
        if not ok:
            return False
    return True


def verify_profile(
    profile: Profile,
    model_id: str,
    dataset: str | Path | ImageSource,
    *,
    image_column: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    threshold: float = DEFAULT_THRESHOLD,
) -> GuardResult:
    """Re-check a profile's backend(s) on the model it will run with; record the check in ``profile.guard``.

    The CPU backend is checked when the profile runs CPU replicas on a non-reference backend, the GPU precision
    when it runs GPU replicas below fp32 (on this machine's first GPU). With both, the worse result is returned
    and both are recorded under ``guard["checked"]``. The caller saves the profile afterwards.

    Example:
        >>> result = verify_profile(prof, "openai/clip-vit-base-patch32", "photos/")  # doctest: +SKIP
        >>> result.passed, prof.guard["min_cosine"]  # doctest: +SKIP
        (True, 0.9998)
    """
    source = dataset if isinstance(dataset, ImageSource) else open_source(dataset, image_column)
    reference = build_reference(source, model_id, sample=sample, image_column=image_column)
    cal = config_calibration(source, model_id, profile.config)
    checked = check_config(reference, model_id, profile.config, threshold, cal, source=source)
    if not checked:
        checked = [check_backend(reference, model_id, "eager", "fp32", threshold=threshold)]
    failed = [r for r in checked if not r.passed]
    result = failed[0] if failed else min(checked, key=lambda r: r.min_cosine)
    profile.guard = guard_record(checked)
    return result
