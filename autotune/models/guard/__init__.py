"""Accuracy guard: a faster backend is only worth having if it still finds the same images.

:func:`build_reference` embeds a fixed validation sample of the dataset (default 256 images, evenly spaced over
the scan set, fast-preprocessed) with the eager fp32 reference, and ranks it for a few probe queries ("a photo
of {label}" for up to 5 labels, or fixed generic texts when the data is unlabelled). :func:`check_backend`
runs a candidate backend/precision on the same pixels and compares: cosine of each embedding with its reference
(raw, and centred on the reference mean, which removes the common direction that makes every raw cosine of a
random-weight model look high) and the overlap of each probe's top 9. A candidate passes when its minimum raw
cosine is at least the threshold (:data:`DEFAULT_THRESHOLD`, 0.99) and, on a real model, every probe keeps at
least 8 of its 9 images. On a ``synthetic:`` random-weight stand-in the overlap is recorded but not enforced:
its scores crowd together, so a tiny perturbation reorders the top 9 without meaning anything.

References and check results are cached on disk (``cache_dir("guard")``), so a study checks each backend once.
Whether a saved profile may run on a model (its recorded checks) is the profiles' policy:
:func:`autotune.tuner.profile.guard_ok_for`, :func:`autotune.tuner.profile.verify_profile`.

Modules: ``_figures`` (result types, cosines, overlaps, verdict), ``_reference`` (the sample and its cache),
``_check`` (backend checks, memo), ``_store`` (cache folder and best-effort writes).

Example:
    >>> from autotune.models.guard import build_reference, check_backend
    >>> ref = build_reference("photos/", "openai/clip-vit-base-patch32")  # doctest: +SKIP
    >>> check_backend(ref, "openai/clip-vit-base-patch32", "onnx-int8", "fp32").passed  # doctest: +SKIP
    True
"""

from __future__ import annotations

from autotune.models.guard._check import DECODE_CHECK, check_backend, check_config, check_decode, non_reference_parts
from autotune.models.guard._figures import (
    DEFAULT_SAMPLE,
    DEFAULT_THRESHOLD,
    GENERIC_PROBES,
    GUARD_FORMAT,
    MAX_PROBES,
    MIN_OVERLAP,
    PROBE_K,
    GuardReference,
    GuardResult,
    agreement,
    evaluate,
    is_reference,
    probe_texts_for,
    top_rows,
)
from autotune.models.guard._reference import build_reference

__all__ = [
    "DECODE_CHECK",
    "DEFAULT_SAMPLE",
    "DEFAULT_THRESHOLD",
    "GENERIC_PROBES",
    "GUARD_FORMAT",
    "MAX_PROBES",
    "MIN_OVERLAP",
    "PROBE_K",
    "GuardReference",
    "GuardResult",
    "agreement",
    "build_reference",
    "check_backend",
    "check_config",
    "check_decode",
    "evaluate",
    "is_reference",
    "non_reference_parts",
    "probe_texts_for",
    "top_rows",
]
