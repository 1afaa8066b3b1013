"""Accuracy guard: a faster backend is only worth having if it still finds the same images.

Before a study, :func:`build_reference` embeds a fixed validation sample of the dataset (default 256 images,
evenly spaced over the scan set, fast-preprocessed) with the eager fp32 reference, and ranks it for a few probe
queries ("a photo of {label}" for up to 5 labels, or fixed generic texts when the data is unlabelled).
:func:`check_backend` runs a candidate backend/precision on the same pixels and compares: cosine of each
embedding with its reference (raw, and centred on the reference mean, which removes the common direction that
makes every raw cosine of a random-weight model look high) and the overlap of each probe's top 9. A candidate
passes when its minimum raw cosine is at least the threshold (0.99) and, on a real model, every probe keeps at
least 8 of its 9 images. On a ``synthetic:`` random-weight stand-in the overlap is recorded but not enforced:
its scores crowd together, so a tiny perturbation reorders the top 9 without meaning anything.

References and check results are cached on disk (``cache_dir("guard")``), so a study checks each backend once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.atomic import DiskFullError, atomic_path
from autotune.errors import AutotuneError, ConfigError, DataError, one_line

DEFAULT_SAMPLE = 256
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
_BATCH = 32
# In-process memo of check results: {(reference key, backend, precision, device, threshold): GuardResult}.
_MEMO: dict[tuple[str, str, str, str, float], GuardResult] = {}

log = logging.getLogger(__name__)


@dataclass
class GuardReference:
    """The fp32 eager embeddings of a fixed sample, and the probe queries' top 9 within it."""

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
    """How closely one backend/precision reproduces the reference, and whether that is close enough."""

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
        """The record a profile keeps in its ``guard`` dict (what :func:`guard_ok_for` reads)."""
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
    """Row indices of the ``k`` best images per probe (score descending, index ascending on ties)."""
    scores = np.asarray(probes, dtype=np.float32) @ np.asarray(embeddings, dtype=np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")  # stable: ties keep the lower index first
    return order[:, :k].astype(np.int64)


def _overlaps(reference_top: np.ndarray, candidate_top: np.ndarray) -> list[int]:
    """How many of each probe's reference top-k the candidate's top-k keeps."""
    return [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(reference_top, candidate_top, strict=True)]


# ------------------------------------------------------------------------------------------ reference


def _digest(record: dict[str, Any]) -> str:
    """16 hex chars of a JSON record."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _guard_dir() -> Path:
    """The guard's cache folder: ``cache_dir("guard")``."""
    from autotune.cache import cache_dir

    return cache_dir("guard")


def _cache_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` through ``atomic_path`` for a cache file the guard can do without: failures are logged.

    The result is already in hand: a read-only cache folder or a full disk only costs a re-check next time.
    """
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except (OSError, DiskFullError) as exc:
        log.warning("guard: could not cache %s (%s)", path.name, exc)


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


def _sample_pixels(source: Any, sample: int, spec: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fast-preprocess ``sample`` records evenly spaced over the source (undecodable ones skipped)."""
    from autotune.errors import BadImageError
    from autotune.preprocess import fast_preprocess

    records = source.records()
    if not records:
        raise DataError(f"nothing to check the guard on: {source.describe()} has no records")
    n = min(sample, len(records))
    picks = np.unique(np.linspace(0, len(records) - 1, n).round().astype(int))
    pixels = np.empty((len(picks), spec.crop, spec.crop, 3), np.uint8)
    ids, labels, k = [], [], 0
    for i in picks:
        record = records[int(i)]
        try:
            fast_preprocess(source.read_bytes(record), spec, out=pixels[k])
        except (BadImageError, OSError):
            continue
        ids.append(record.id)
        if record.label is not None:
            labels.append(record.label)
        k += 1
    if k == 0:
        raise DataError(f"no image of the guard sample could be decoded in {source.describe()}")
    return pixels[:k], np.asarray(ids, np.int64), labels


def _embed_all(backend: Any, pixels: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    """Embed the sample in batches."""
    parts = [backend.embed(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return np.concatenate(parts).astype(np.float32)


def build_reference(
    dataset: str | Path | Any,
    model_id: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    image_column: str | None = None,
    cache: bool = True,
) -> GuardReference:
    """The guard's reference for a dataset (path or :class:`ImageSource`) and model, cached on disk.

    Keyed by (dataset fingerprint, weights hash, sample size): the second call for the same triple loads the
    arrays instead of running the model.

    Example:
        >>> ref = build_reference("data/", "synthetic:tiny", sample=32)  # doctest: +SKIP
        >>> ref.embeddings.shape, ref.probe_top.shape  # doctest: +SKIP
        ((32, 32), (5, 9))
    """
    from autotune.data import open_source
    from autotune.models.backends import BackendSpec, build_backend, model_facts

    if sample < 1:
        raise ConfigError(f"guard sample must be >= 1, got {sample}")
    source: Any = dataset if hasattr(dataset, "records") else open_source(dataset, image_column)
    facts = model_facts(model_id)
    fingerprint = source.fingerprint()
    key = _digest(
        {"format": GUARD_FORMAT, "dataset": fingerprint, "weights": facts.weights_hash, "sample": sample,
         "crop": facts.preprocess.crop}
    )
    path = _guard_dir() / f"reference-{key}.npz"
    if cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return GuardReference(
                    key=key,
                    model_id=model_id,
                    weights_hash=facts.weights_hash,
                    synthetic=facts.synthetic,
                    dataset_fingerprint=fingerprint,
                    record_ids=data["record_ids"],
                    pixels=data["pixels"],
                    embeddings=data["embeddings"],
                    probe_texts=list(meta["probe_texts"]),
                    probe_embeddings=data["probe_embeddings"],
                    probe_top=data["probe_top"],
                )
    pixels, ids, labels = _sample_pixels(source, sample, facts.preprocess)
    backend = build_backend(BackendSpec(model_id=model_id, backend="eager"))
    embeddings = _embed_all(backend, pixels)
    del backend
    texts = probe_texts_for(labels)
    from autotune.models.loading import encode_texts, load_clip

    probes = encode_texts(load_clip(model_id), texts).numpy().astype(np.float32)
    ref = GuardReference(
        key=key,
        model_id=model_id,
        weights_hash=facts.weights_hash,
        synthetic=facts.synthetic,
        dataset_fingerprint=fingerprint,
        record_ids=ids,
        pixels=pixels,
        embeddings=embeddings,
        probe_texts=texts,
        probe_embeddings=probes,
        probe_top=top_rows(probes, embeddings),
    )
    if cache:

        def write(tmp: Path) -> None:
            """The reference's arrays as one npz (no pickled objects: read back with allow_pickle=False)."""
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    record_ids=ref.record_ids,
                    pixels=ref.pixels,
                    embeddings=ref.embeddings,
                    probe_embeddings=ref.probe_embeddings,
                    probe_top=ref.probe_top,
                    meta=np.asarray(json.dumps({"probe_texts": texts, "model_id": model_id})),
                )

        _cache_write(path, write)
    return ref


# ------------------------------------------------------------------------------------------ checks


def is_reference(backend: str, precision: str) -> bool:
    """Whether (backend, precision) is the eager fp32 reference, which needs no check."""
    return backend == "eager" and precision == "fp32"


def evaluate(
    reference: GuardReference,
    embeddings: np.ndarray,
    *,
    backend: str,
    precision: str,
    device: str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
) -> GuardResult:
    """Judge a candidate's embeddings of the reference sample (no model run here)."""
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


def _check_key(reference: GuardReference, backend: str, precision: str, device: str, threshold: float) -> str:
    """Cache key of one check: reference, candidate, device kind, threshold and the libraries' versions."""
    from autotune.models.backends import library_versions

    versions = library_versions("torch", "transformers", "onnx", "onnxruntime", "openvino")
    return _digest(
        {"format": GUARD_FORMAT, "reference": reference.key, "backend": backend, "precision": precision,
         "device": device.split(":")[0], "threshold": threshold, "versions": versions}
    )


def check_backend(
    reference: GuardReference,
    model_id: str,
    backend: str,
    precision: str,
    device: str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    *,
    cache: bool = True,
) -> GuardResult:
    """Check one backend/precision against the reference (cached per reference, backend, precision, device).

    The eager fp32 reference passes without running. A backend that cannot be built or fails while embedding
    does not pass (``reason`` says why). A study calls this once per backend, not per trial.

    Example:
        >>> check_backend(ref, "synthetic:tiny", "onnx-int8", "fp32").passed  # doctest: +SKIP
        True
    """
    import time

    from autotune.models.backends import BackendSpec, build_backend, model_facts

    facts = model_facts(model_id)
    if facts.weights_hash != reference.weights_hash:
        raise ConfigError(
            f"guard reference was built for weights {reference.weights_hash}, model '{model_id}' has "
            f"{facts.weights_hash}: build the reference with the model the study runs"
        )
    if is_reference(backend, precision):
        return GuardResult(
            backend=backend, precision=precision, device=device, model_id=model_id, weights_hash=facts.weights_hash,
            n=reference.size, probe_overlap_min=PROBE_K, probe_overlaps=[PROBE_K] * len(reference.probe_texts),
            enforced_overlap=not reference.synthetic, passed=True, threshold=threshold,
            extra={"reference": True}, min_cosine=1.0, mean_cosine=1.0, centred_min_cosine=1.0,
            centred_mean_cosine=1.0,
        )
    memo_key = (reference.key, backend, precision, device.split(":")[0], threshold)
    if cache and memo_key in _MEMO:
        return _MEMO[memo_key]
    path = _guard_dir() / f"check-{_check_key(reference, backend, precision, device, threshold)}.json"
    if cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            result = GuardResult.from_dict(json.loads(path.read_text()))
            result.model_id = model_id
            _MEMO[memo_key] = result
            return result
    start = time.perf_counter()
    try:
        runner = build_backend(BackendSpec(model_id=model_id, device=device, precision=precision, backend=backend,
                                           batch=_BATCH))
        embeddings = _embed_all(runner, reference.pixels)
        setup = getattr(runner, "setup_seconds", 0.0)
        del runner
    except (AutotuneError, ImportError, RuntimeError, ValueError, OSError) as exc:
        first = one_line(exc) or type(exc).__name__
        nan = float("nan")
        return GuardResult(
            backend=backend, precision=precision, device=device, model_id=model_id, weights_hash=facts.weights_hash,
            n=reference.size, min_cosine=nan, mean_cosine=nan, centred_min_cosine=nan, centred_mean_cosine=nan,
            probe_overlap_min=0, probe_overlaps=[], enforced_overlap=not reference.synthetic, passed=False,
            threshold=threshold, reason=f"backend could not run: {type(exc).__name__}: {first}",
        )
    result = evaluate(reference, embeddings, backend=backend, precision=precision, device=device, threshold=threshold)
    result.seconds = round(time.perf_counter() - start, 3)
    result.extra["setup_seconds"] = round(float(setup), 3)
    if cache:
        _MEMO[memo_key] = result
        _cache_write(path, lambda tmp: tmp.write_text(json.dumps(result.to_dict())))
    return result


# ------------------------------------------------------------------------------------------ profiles


def _profile_parts(profile: Any) -> list[tuple[str, str, str]]:
    """The (device kind, backend, precision) pairs a profile runs that are not the reference."""
    return non_reference_parts(profile.config)


def non_reference_parts(config: Any) -> list[tuple[str, str, str]]:
    """The (device kind, backend, precision) pairs an engine config runs that are not the fp32 eager reference."""
    parts = []
    if config.cpu_models and not is_reference(config.cpu_backend, "fp32"):
        parts.append(("cpu", config.cpu_backend, "fp32"))
    if config.gpu_models and not is_reference("eager", config.gpu_precision):
        parts.append(("cuda", "eager", config.gpu_precision))
    return parts


def verify_profile(
    profile: Any,
    model_id: str,
    dataset: str | Path | Any,
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
    reference = build_reference(dataset, model_id, sample=sample, image_column=image_column)
    checked = check_config(reference, model_id, profile.config, threshold)
    if not checked:
        checked = [check_backend(reference, model_id, "eager", "fp32", threshold=threshold)]
    failed = [r for r in checked if not r.passed]
    result = failed[0] if failed else min(checked, key=lambda r: r.min_cosine)
    profile.guard = guard_record(checked)
    return result


def check_config(
    reference: GuardReference, model_id: str, config: Any, threshold: float = DEFAULT_THRESHOLD
) -> list[GuardResult]:
    """Guard results for every non-reference part of an engine config (empty for fp32 eager)."""
    out = []
    for kind, backend, precision in non_reference_parts(config):
        device = "cpu" if kind == "cpu" else "cuda:0"
        out.append(check_backend(reference, model_id, backend, precision, device, threshold))
    return out


def guard_record(checked: Sequence[GuardResult]) -> dict[str, Any]:
    """The ``guard`` dict a profile keeps (what :func:`guard_ok_for` reads) for a set of checks."""
    failed = [r for r in checked if not r.passed]
    record = (failed[0] if failed else min(checked, key=lambda r: r.min_cosine)).profile_guard()
    cpu = next((r for r in checked if r.device == "cpu"), None)
    if cpu is not None:  # the top-level backend is the CPU one when the profile runs both
        record["backend"], record["precision"] = cpu.backend, cpu.precision
    record["passed"] = all(r.passed for r in checked)
    record["min_cosine"] = round(min(r.min_cosine for r in checked), 6)
    record["checked"] = [r.profile_guard() for r in checked]
    return record


def guard_ok_for(profile: Any, weights_hash: str) -> bool:
    """Whether a profile may run on the model with ``weights_hash``: its guard passed there, or needs none.

    A profile on the eager fp32 reference (CPU replicas on ``eager``, GPU replicas at fp32) needs no check.
    Otherwise its ``guard`` must record a passed check on these very weights for every non-reference part.

    Example:
        >>> guard_ok_for(profile_on_eager, "0123456789abcdef")  # doctest: +SKIP
        True
    """
    parts = _profile_parts(profile)
    if not parts:
        return True
    guard = getattr(profile, "guard", None) or {}
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
