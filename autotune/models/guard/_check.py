"""Checking a backend against the reference: build it, embed the sample, judge; memoised and cached on disk.

A study checks each backend once, not per trial: results are kept in an in-process memo and as JSON under
``cache_dir("guard")``, keyed by reference, candidate, device kind, threshold and the libraries' versions.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from autotune.errors import AutotuneError, ConfigError, one_line
from autotune.models import backends
from autotune.models.facts import model_facts
from autotune.models.guard._figures import (
    DEFAULT_THRESHOLD,
    GUARD_FORMAT,
    PROBE_K,
    GuardReference,
    GuardResult,
    evaluate,
    is_reference,
)
from autotune.models.guard._reference import _BATCH, _embed_all
from autotune.models.guard._store import _cache_write, _digest, _guard_dir

if TYPE_CHECKING:
    from autotune.data import ImageSource


class ReplicaSetup(Protocol):
    """What the guard reads of an engine configuration: which backends and precisions its replicas run.

    The engine's ``EngineConfig`` has these; the models layer names them here rather than importing the engine,
    which imports the backends.
    """

    @property
    def cpu_models(self) -> int: ...
    @property
    def cpu_backend(self) -> str: ...
    @property
    def gpu_models(self) -> int: ...
    @property
    def gpu_backend(self) -> str: ...
    @property
    def gpu_precision(self) -> str: ...
    @property
    def decode(self) -> str: ...

#: The guard's name for GPU replicas decoding their own JPEGs (``decode: gpu``), checked as a part of its own.
DECODE_CHECK = "gpu-decode"

# In-process memo of check results: {(reference key, backend, precision, device kind, threshold): GuardResult}.
_MEMO: dict[tuple[str, str, str, str, float], GuardResult] = {}


def _check_key(
    reference: GuardReference, backend: str, precision: str, device: str, threshold: float, calibration: str
) -> str:
    """Cache key of one check: reference, candidate (and its calibration set), device kind, threshold, libraries."""
    versions = backends.library_versions("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf")
    record = {"format": GUARD_FORMAT, "reference": reference.key, "backend": backend, "precision": precision,
              "device": device.split(":")[0], "threshold": threshold, "versions": versions}  # fmt: skip
    if calibration:  # only then: the keys of existing checks stay valid
        record["calibration"] = calibration
    if device.split(":")[0] == "cpu" and backends.backend_revision(backend):  # likewise
        record["revision"] = backends.backend_revision(backend)
    return _digest(record)


def _reference_result(
    reference: GuardReference, model_id: str, backend: str, precision: str, device: str, threshold: float
) -> GuardResult:
    """The reference's own result: perfect figures, no run."""
    return GuardResult(
        backend=backend, precision=precision, device=device, model_id=model_id, weights_hash=reference.weights_hash,
        n=reference.size, probe_overlap_min=PROBE_K, probe_overlaps=[PROBE_K] * len(reference.probe_texts),
        enforced_overlap=not reference.synthetic, passed=True, threshold=threshold,
        extra={"reference": True}, min_cosine=1.0, mean_cosine=1.0, centred_min_cosine=1.0,
        centred_mean_cosine=1.0,
    )


def _failed_run(
    reference: GuardReference, model_id: str, backend: str, precision: str, device: str, threshold: float,
    exc: Exception,
) -> GuardResult:
    """The result of a backend that could not be built or failed while embedding: not passed, NaN figures."""
    first = one_line(exc) or type(exc).__name__
    nan = float("nan")
    return GuardResult(
        backend=backend, precision=precision, device=device, model_id=model_id, weights_hash=reference.weights_hash,
        n=reference.size, min_cosine=nan, mean_cosine=nan, centred_min_cosine=nan, centred_mean_cosine=nan,
        probe_overlap_min=0, probe_overlaps=[], enforced_overlap=not reference.synthetic, passed=False,
        threshold=threshold, reason=f"backend could not run: {type(exc).__name__}: {first}",
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
    calibration: str | None = None,
) -> GuardResult:
    """Check one backend/precision against the reference (cached per reference, backend, precision, device).

    ``calibration`` is the stored calibration set a statically quantised backend is built with (its digest
    keys the check); without one such a backend cannot be built and does not pass.

    The eager fp32 reference passes without running. A backend that cannot be built or fails while embedding
    does not pass (``reason`` says why). A study calls this once per backend, not per trial.

    Example:
        >>> check_backend(ref, "synthetic:tiny", "onnx-int8", "fp32").passed  # doctest: +SKIP
        True
    """
    facts = model_facts(model_id)
    if facts.weights_hash != reference.weights_hash:
        raise ConfigError(
            f"guard reference was built for weights {reference.weights_hash}, model '{model_id}' has "
            f"{facts.weights_hash}: build the reference with the model the study runs"
        )
    if is_reference(backend, precision):
        return _reference_result(reference, model_id, backend, precision, device, threshold)
    cal = Path(calibration).stem if calibration else ""
    memo_key = (reference.key, backend + (f"@cal:{cal}" if cal else ""), precision, device.split(":")[0], threshold)
    if cache and memo_key in _MEMO:
        return _MEMO[memo_key]
    path = _guard_dir() / f"check-{_check_key(reference, backend, precision, device, threshold, cal)}.json"
    if cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            result = GuardResult.from_dict(json.loads(path.read_text()))
            result.model_id = model_id
            _MEMO[memo_key] = result
            return result
    start = time.perf_counter()
    try:
        spec = backends.BackendSpec(model_id=model_id, device=device, precision=precision, backend=backend,
                                    batch=_BATCH, calibration=calibration)
        runner = backends.build_backend(spec)
        embeddings = _embed_all(runner, reference.pixels)
        setup = runner.setup_seconds
        del runner
    except (AutotuneError, ImportError, RuntimeError, ValueError, OSError) as exc:
        return _failed_run(reference, model_id, backend, precision, device, threshold, exc)
    result = evaluate(reference, embeddings, backend=backend, precision=precision, device=device, threshold=threshold)
    result.seconds = round(time.perf_counter() - start, 3)
    result.extra["setup_seconds"] = round(float(setup), 3)
    if cache:
        _MEMO[memo_key] = result
        _cache_write(path, lambda tmp: tmp.write_text(json.dumps(result.to_dict())))
    return result


def non_reference_parts(config: ReplicaSetup) -> list[tuple[str, str, str]]:
    """The (device kind, backend, precision) parts an engine config runs that are not the fp32 eager reference.

    Example:
        >>> non_reference_parts(EngineConfig(cpu_backend="int8"))  # doctest: +SKIP
        [('cpu', 'int8', 'fp32')]
    """
    parts = []
    if config.cpu_models and not is_reference(config.cpu_backend, "fp32"):
        parts.append(("cpu", config.cpu_backend, "fp32"))
    if config.gpu_models and not is_reference(config.gpu_backend, config.gpu_precision):
        parts.append(("cuda", config.gpu_backend, config.gpu_precision))
    if config.gpu_models and config.decode == "gpu":
        # A CPU replica of decode: gpu decodes on the CPU fast path, the reference's own: only GPUs are checked.
        parts.append(("cuda", DECODE_CHECK, "fp32"))
    return parts


def check_decode(
    reference: GuardReference,
    model_id: str,
    source: ImageSource | None,
    device: str = "cuda:0",
    threshold: float = DEFAULT_THRESHOLD,
) -> GuardResult:
    """Check decoding on ``device`` (:func:`autotune.preprocess.decoders.decoder_for`) against the reference path.

    The sample's own JPEG bytes are decoded, resized and cropped by the device's batch decoder and embedded by
    the fp32 eager tower on that device; the embeddings are judged against the reference's (CPU fast path,
    CPU fp32) like any backend's. Memoised per process.

    Example:
        >>> check_decode(ref, "synthetic:tiny", open_source("data/"), "cpu").passed  # doctest: +SKIP
        True
    """
    memo_key = (reference.key, DECODE_CHECK, "fp32", device.split(":")[0], threshold)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    start = time.perf_counter()
    try:
        if source is None:
            raise ConfigError("the decode check needs the images' bytes, and no image source was given")
        from autotune.preprocess.decoders import decoder_for

        records = source.records()
        datas = [source.read_bytes(records[int(i)]) for i in reference.record_ids]
        decoder = decoder_for(device)
        spec = backends.BackendSpec(model_id=model_id, device=device, precision="fp32", batch=_BATCH)
        runner = backends.build_backend(spec)
        preprocess = model_facts(model_id).preprocess
        parts = []
        for i in range(0, len(datas), _BATCH):
            pixels, failures = decoder.decode(datas[i : i + _BATCH], preprocess)
            if failures:
                raise ValueError(f"sample image {i + failures[0][0]} did not decode: {failures[0][1]}")
            parts.append(runner.embed_decoded(pixels))
        embeddings = np.concatenate(parts).astype(np.float32)
        del runner
    except (AutotuneError, ImportError, RuntimeError, ValueError, OSError) as exc:
        return _failed_run(reference, model_id, DECODE_CHECK, "fp32", device, threshold, exc)
    result = evaluate(reference, embeddings, backend=DECODE_CHECK, precision="fp32", device=device, threshold=threshold)
    result.seconds = round(time.perf_counter() - start, 3)
    result.extra["decoder"] = decoder.name
    _MEMO[memo_key] = result
    return result


def check_config(
    reference: GuardReference,
    model_id: str,
    config: ReplicaSetup,
    threshold: float = DEFAULT_THRESHOLD,
    calibration: str | None = None,
    source: ImageSource | None = None,
) -> list[GuardResult]:
    """Guard results for every non-reference part of an engine config (empty for fp32 eager).

    CPU parts are checked on the CPU (a statically quantised one with ``calibration``), GPU parts on this
    machine's first GPU; GPU decoding (``decode: gpu``) on the sample's bytes read from ``source``.

    Example:
        >>> [r.passed for r in check_config(ref, "synthetic:tiny", EngineConfig(cpu_backend="int8"))]  # doctest: +SKIP
        [True]
    """
    out = []
    for kind, backend, precision in non_reference_parts(config):
        device = "cpu" if kind == "cpu" else "cuda:0"
        cal = calibration if kind == "cpu" else None
        if backend == DECODE_CHECK:
            out.append(check_decode(reference, model_id, source, device, threshold))
            continue
        out.append(check_backend(reference, model_id, backend, precision, device, threshold, calibration=cal))
    return out
