"""The guard's figures: result types, cosine agreement, probe top-k overlaps, and the pass/fail verdict.

A candidate passes when its minimum raw cosine with the eager fp32 reference is at least the threshold
(:data:`DEFAULT_THRESHOLD`) and, on a real model, every probe keeps at least :data:`MIN_OVERLAP` of its
:data:`PROBE_K` images. Centred cosines (on the reference mean) are recorded beside the raw ones: they remove
the common direction that makes every raw cosine of a random-weight model look high.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.models.backends import REFERENCE_BACKEND
from autotune.models.calibration import GUARD_SAMPLE

DEFAULT_SAMPLE = GUARD_SAMPLE
# The one definition of the guard's threshold: the least cosine with eager fp32 a backend may keep.
DEFAULT_THRESHOLD = 0.99
PROBE_K = 9
MIN_OVERLAP = 8
MAX_PROBES = 5
GUARD_FORMAT = "1"
GENERIC_PROBES = (
    "a photo of an animal",
    "a photo of a plant",
    "a photo of food",
    "a photo of a landscape",
    "a photo of an object",
)


@dataclass
class GuardReference:
    """The fp32 eager embeddings of a fixed sample, and the probe queries' top 9 within it.

    ``key`` names it in the guard's cache (dataset fingerprint, weights, sample size, crop); ``pixels`` are the
    fast-preprocessed sample every candidate backend embeds in turn.

    Example:
        >>> ref = build_reference("data/", "synthetic:tiny", sample=32)  # doctest: +SKIP
        >>> ref.size, ref.embeddings.shape, ref.probe_top.shape  # doctest: +SKIP
        (32, (32, 32), (5, 9))
    """

    key: str
    model_id: str
    weights_hash: str
    synthetic: bool
    dataset_fingerprint: str
    record_ids: np.ndarray  # int64 [N]: ids of the sampled records
    pixels: np.ndarray  # uint8 [N, H, W, 3]: fast-preprocessed sample
    embeddings: np.ndarray  # float32 [N, D]: eager fp32, unit rows
    probe_texts: list[str]
    probe_embeddings: np.ndarray  # float32 [P, D]
    probe_top: np.ndarray  # int64 [P, k]: row indices into the sample, best first

    @property
    def size(self) -> int:
        """Images in the sample."""
        return int(len(self.record_ids))

    @property
    def mean(self) -> np.ndarray:
        """Mean reference embedding (the centre for the centred cosines)."""
        return np.asarray(self.embeddings.mean(axis=0), dtype=np.float32)


@dataclass
class GuardResult:
    """How closely one backend/precision reproduces the reference, and whether that is close enough.

    Cosines are of each sample image's embedding with its reference (raw, and centred on the reference mean);
    ``probe_overlaps`` is how many of each probe's reference top :data:`PROBE_K` the candidate keeps, enforced
    only on real models (``enforced_overlap``). ``reason`` says why a check failed; ``extra`` holds setup
    figures. It round-trips through JSON (:meth:`to_dict`, :meth:`from_dict`).

    Example:
        >>> result = check_backend(ref, "synthetic:tiny", "int8", "fp32")  # doctest: +SKIP
        >>> result.passed, round(result.min_cosine, 4), result.probe_overlaps  # doctest: +SKIP
        (True, 0.9997, [9, 9, 9, 8, 9])
    """

    backend: str
    precision: str
    device: str
    model_id: str
    weights_hash: str
    n: int
    min_cosine: float
    mean_cosine: float
    centred_min_cosine: float
    centred_mean_cosine: float
    probe_overlap_min: int
    probe_overlaps: list[int]
    enforced_overlap: bool
    passed: bool
    threshold: float = DEFAULT_THRESHOLD
    reason: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardResult:
        """Rebuild from :meth:`to_dict` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def profile_guard(self) -> dict[str, Any]:
        """The record a profile keeps in its ``guard`` dict (what :func:`autotune.tuner.profile.guard_ok_for` reads)."""
        return {
            "model": self.model_id,
            "weights_hash": self.weights_hash,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "min_cosine": round(self.min_cosine, 6),
            "centred_min_cosine": round(self.centred_min_cosine, 6),
            "probe_overlap_min": self.probe_overlap_min,
            "enforced_overlap": self.enforced_overlap,
            "threshold": self.threshold,
            "passed": self.passed,
            "reason": self.reason,
        }


# ------------------------------------------------------------------------------------------ figures


def agreement(reference: np.ndarray, candidate: np.ndarray, centre: np.ndarray | None = None) -> dict[str, float]:
    """Raw and centred cosine of each candidate row with its reference row: min and mean of each.

    ``centre`` (default: the reference mean) is subtracted from both before the centred cosines.

    Example:
        >>> ref = np.eye(3, dtype=np.float32)
        >>> agreement(ref, ref)["min_cosine"]
        1.0
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"embedding shapes differ: reference {ref.shape}, candidate {cand.shape}")

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise cosine (a zero row gives 0, not NaN)."""
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return np.asarray((a * b).sum(axis=1) / np.maximum(den, 1e-12))

    mid = ref.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float64)
    raw, centred = cos(ref, cand), cos(ref - mid, cand - mid)
    return {
        "min_cosine": float(raw.min()),
        "mean_cosine": float(raw.mean()),
        "centred_min_cosine": float(centred.min()),
        "centred_mean_cosine": float(centred.mean()),
    }


def top_rows(probes: np.ndarray, embeddings: np.ndarray, k: int = PROBE_K) -> np.ndarray:
    """Row indices of the ``k`` best images per probe (score descending, index ascending on ties).

    Example:
        >>> top_rows(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), k=1).tolist()
        [[0], [1]]
    """
    scores = np.asarray(probes, dtype=np.float32) @ np.asarray(embeddings, dtype=np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")  # stable: ties keep the lower index first
    return order[:, :k].astype(np.int64)


def _overlaps(reference_top: np.ndarray, candidate_top: np.ndarray) -> list[int]:
    """How many of each probe's reference top-k the candidate's top-k keeps."""
    return [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(reference_top, candidate_top, strict=True)]


def probe_texts_for(labels: Sequence[str]) -> list[str]:
    """Probe queries: "a photo of {label}" for up to 5 labels spread over the sorted list, else generic texts.

    Example:
        >>> probe_texts_for(["cat", "dog"])
        ['a photo of cat', 'a photo of dog']
        >>> probe_texts_for([])[0]
        'a photo of an animal'
    """
    labels = sorted(set(labels))
    if not labels:
        return list(GENERIC_PROBES)
    if len(labels) > MAX_PROBES:
        picks = np.linspace(0, len(labels) - 1, MAX_PROBES).round().astype(int)
        labels = [labels[i] for i in picks]
    return [f"a photo of {label}" for label in labels]


def is_reference(backend: str, precision: str) -> bool:
    """Whether (backend, precision) is the eager fp32 reference, which needs no check.

    Example:
        >>> is_reference("eager", "fp32"), is_reference("eager", "fp16"), is_reference("int8", "fp32")
        (True, False, False)
    """
    return backend == REFERENCE_BACKEND and precision == "fp32"


def evaluate(
    reference: GuardReference,
    embeddings: np.ndarray,
    *,
    backend: str,
    precision: str,
    device: str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
) -> GuardResult:
    """Judge a candidate's embeddings of the reference sample (no model run here).

    Fails on a minimum raw cosine below ``threshold`` (NaN included) and, on a real model, on a probe that
    keeps fewer than :data:`MIN_OVERLAP` of its top :data:`PROBE_K`; ``reason`` names each failed figure.

    Example:
        >>> evaluate(ref, ref.embeddings, backend="x", precision="fp32").passed  # doctest: +SKIP
        True
    """
    figures = agreement(reference.embeddings, embeddings, reference.mean)
    top = top_rows(reference.probe_embeddings, embeddings)
    overlaps = _overlaps(reference.probe_top, top)
    overlap_min = min(overlaps) if overlaps else PROBE_K
    enforced = not reference.synthetic
    reasons = []
    if not figures["min_cosine"] >= threshold:  # also catches NaN
        reasons.append(f"min cosine {figures['min_cosine']:.4f} < {threshold}")
    if enforced and overlap_min < MIN_OVERLAP:
        reasons.append(f"probe top-{PROBE_K} overlap {overlap_min}/{PROBE_K} < {MIN_OVERLAP}/{PROBE_K}")
    return GuardResult(
        backend=backend,
        precision=precision,
        device=device,
        model_id=reference.model_id,
        weights_hash=reference.weights_hash,
        n=reference.size,
        probe_overlap_min=int(overlap_min),
        probe_overlaps=[int(o) for o in overlaps],
        enforced_overlap=enforced,
        passed=not reasons,
        threshold=threshold,
        reason="; ".join(reasons),
        min_cosine=figures["min_cosine"],
        mean_cosine=figures["mean_cosine"],
        centred_min_cosine=figures["centred_min_cosine"],
        centred_mean_cosine=figures["centred_mean_cosine"],
    )

