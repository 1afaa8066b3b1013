"""Accuracy guard: reference sample, backend checks (memo and disk cache), overlap enforcement."""

from __future__ import annotations

import dataclasses
import errno
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune import atomic
from autotune.engine.config import EngineConfig
from autotune.models import backends as B
from autotune.models import guard as G
from autotune.models.backends import backend_unavailable
from autotune.models.guard import (
    DEFAULT_THRESHOLD,
    GuardReference,
    GuardResult,
    agreement,
    build_reference,
    check_backend,
    check_config,
    evaluate,
    non_reference_parts,
    probe_texts_for,
)
from autotune.models.guard._check import _MEMO

SAMPLE = 24


@pytest.fixture(scope="module")
def reference(small_dataset: Path, tiny_model: str) -> GuardReference:
    """The tiny model's reference on 24 images of the generated corpus."""
    return build_reference(small_dataset, tiny_model, sample=SAMPLE)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    """Each test starts with an empty in-process memo (the disk cache is per test session)."""
    _MEMO.clear()


class _Permuted:
    """A broken backend: the right embeddings, attached to the wrong images."""

    embed_dim = 32
    setup_seconds = 0.0

    def __init__(self, spec: Any, **_: Any) -> None:
        """Wrap eager fp32 (whatever backend the spec names)."""
        self.inner = B.TorchBackend(dataclasses.replace(spec, backend="eager"))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Eager embeddings in reverse row order."""
        return self.inner.embed(batch)[::-1].copy()


def test_reference_shape_and_cache(reference: GuardReference, small_dataset: Path, tiny_model: str) -> None:
    """Sample spread over the data, unit fp32 embeddings, probe top-9s; a second build loads the cache."""
    assert reference.size == SAMPLE and reference.synthetic
    assert reference.pixels.shape == (SAMPLE, 224, 224, 3) and reference.pixels.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(reference.embeddings, axis=1), 1.0, atol=1e-5)
    assert reference.record_ids[0] == 0 and reference.record_ids[-1] == 47  # evenly spaced over all 48
    assert len(reference.probe_texts) == 5 and all(t.startswith("a photo of ") for t in reference.probe_texts)
    assert reference.probe_top.shape == (5, 9)
    again = build_reference(small_dataset, tiny_model, sample=SAMPLE)
    assert again.key == reference.key
    np.testing.assert_array_equal(again.embeddings, reference.embeddings)
    assert again.probe_texts == reference.probe_texts
    assert build_reference(small_dataset, tiny_model, sample=SAMPLE - 1).key != reference.key


def test_probe_texts() -> None:
    """Up to five labels spread over the sorted list; generic texts without labels."""
    labels = [f"label {i:02d}" for i in range(17)]
    texts = probe_texts_for(labels)
    assert len(texts) == 5 and texts[0] == "a photo of label 00" and texts[-1] == "a photo of label 16"
    assert probe_texts_for([]) == list(G.GENERIC_PROBES)


def test_agreement_centred_is_stricter() -> None:
    """Rows crowded around a common direction: raw cosine looks perfect, the centred one does not."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal(16)
    ref = common + 0.05 * rng.standard_normal((20, 16))
    cand = common + 0.05 * rng.standard_normal((20, 16))
    figures = agreement(ref, cand)
    assert figures["min_cosine"] > 0.98 and figures["centred_mean_cosine"] < 0.5


def test_eager_passes_trivially(reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference backend needs no run: perfect figures."""
    monkeypatch.setattr(B, "build_backend", lambda *a, **k: pytest.fail("the reference must not be rebuilt"))
    result = check_backend(reference, tiny_model, "eager", "fp32")
    assert result.passed and result.min_cosine == 1.0 and result.probe_overlap_min == 9 and not result.reason


def test_broken_backend_fails_with_a_reason(
    reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings permuted across images: low cosine, failed, reason says which figure."""
    monkeypatch.setattr(B, "build_backend", lambda spec, **k: _Permuted(spec))
    result = check_backend(reference, tiny_model, "onnx", "fp32", cache=False)
    assert not result.passed and "min cosine" in result.reason
    assert result.centred_min_cosine < result.min_cosine
    assert not result.enforced_overlap and len(result.probe_overlaps) == 5  # recorded, not enforced


def test_overlap_enforced_only_on_real_models(reference: GuardReference) -> None:
    """Same embeddings, cosine threshold out of the way: a real model fails on overlap, a synthetic one not."""
    shuffled = reference.embeddings[np.random.default_rng(1).permutation(reference.size)]
    synthetic = evaluate(reference, shuffled, backend="x", precision="fp32", threshold=-1.0)
    real = evaluate(dataclasses.replace(reference, synthetic=False), shuffled, backend="x", precision="fp32",
                    threshold=-1.0)
    assert synthetic.passed and not synthetic.enforced_overlap
    assert synthetic.probe_overlap_min < 8
    assert not real.passed and real.enforced_overlap and "overlap" in real.reason
    same = evaluate(dataclasses.replace(reference, synthetic=False), reference.embeddings, backend="x",
                    precision="fp32")
    assert same.passed and same.probe_overlap_min == 9


def test_backend_that_cannot_run_fails(
    reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build error is a failed check with the error as its reason, not a crash."""

    def boom(*_: Any, **__: Any) -> None:
        """A backend whose build fails."""
        raise RuntimeError("no kernels for you")

    monkeypatch.setattr(B, "build_backend", boom)
    result = check_backend(reference, tiny_model, "onnx", "fp32", cache=False)
    assert not result.passed and "could not run" in result.reason and "no kernels" in result.reason


@pytest.mark.parametrize("name", ["int8", "onnx-int8"])
def test_real_backends_pass_and_are_cached(
    name: str, reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real lossy backend passes on the tiny model; the second check (memo, then disk) runs nothing."""
    if backend_unavailable(name):
        pytest.skip(str(backend_unavailable(name)))
    first = check_backend(reference, tiny_model, name, "fp32")
    assert first.passed and first.min_cosine >= 0.99 and first.n == SAMPLE, first.reason
    assert first.extra["setup_seconds"] > 0
    monkeypatch.setattr(B, "build_backend", lambda *a, **k: pytest.fail("checked twice"))
    assert check_backend(reference, tiny_model, name, "fp32") is first  # in-process memo
    _MEMO.clear()
    from_disk = check_backend(reference, tiny_model, name, "fp32")  # the json under cache_dir("guard")
    assert from_disk.to_dict() == first.to_dict()
    assert GuardResult.from_dict(first.to_dict()) == first


def test_cache_that_cannot_be_written_does_not_fail_the_check(
    reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk while caching a check result: the result still comes back, a warning says it was not
    cached, and the guard folder keeps no half-written or temporary file."""
    from autotune.cache import cache_dir

    # An "onnx" that runs eager: passes, and needs no onnxruntime. Threshold 0.98: a check no other test caches.
    monkeypatch.setattr(B, "build_backend", lambda spec, **_: _Permuted(spec).inner)

    def full(_path: Path) -> None:
        """The disk is full when the new file is flushed."""
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "fsync_file", full)
    before = set(cache_dir("guard").iterdir())
    with caplog.at_level(logging.WARNING, logger=G.__name__):
        result = check_backend(reference, tiny_model, "onnx", "fp32", threshold=0.98)
    assert result.passed and "could not cache" in caplog.text and "no space left" in caplog.text
    assert set(cache_dir("guard").iterdir()) == before



def test_changed_backend_is_checked_again(
    reference: GuardReference, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend whose numerics changed (its revision bumped) is not passed on its old cached result."""
    built: list[str] = []

    def eager(spec: Any, **_: Any) -> Any:
        """An "onnx" that runs eager (needs no onnxruntime), counting its builds."""
        built.append(spec.backend)
        return _Permuted(spec).inner

    monkeypatch.setattr(B, "build_backend", eager)
    entry = B.CPU_BACKEND_TABLE["onnx"]
    first = check_backend(reference, tiny_model, "onnx", "fp32", threshold=0.97)  # a threshold no other test uses
    _MEMO.clear()
    assert check_backend(reference, tiny_model, "onnx", "fp32", threshold=0.97).to_dict() == first.to_dict()
    assert len(built) == 1  # the second came from the disk cache
    monkeypatch.setitem(B.CPU_BACKEND_TABLE, "onnx", dataclasses.replace(entry, revision=entry.revision + 1))
    _MEMO.clear()
    assert check_backend(reference, tiny_model, "onnx", "fp32", threshold=0.97).passed
    assert len(built) == 2


def test_non_reference_parts_and_check_config(reference: GuardReference, tiny_model: str) -> None:
    """Eager fp32 has nothing to check; a CPU backend and a GPU precision below fp32 each do."""
    assert non_reference_parts(EngineConfig()) == []
    assert check_config(reference, tiny_model, EngineConfig()) == []
    assert non_reference_parts(EngineConfig(cpu_backend="int8")) == [("cpu", "int8", "fp32")]
    both = EngineConfig(cpu_backend="onnx", gpu_models=1, gpu_precision="fp16")
    assert non_reference_parts(both) == [("cpu", "onnx", "fp32"), ("cuda", "eager", "fp16")]
    assert non_reference_parts(EngineConfig(cpu_models=0, gpu_models=1, gpu_precision="fp32")) == []


def test_threshold_is_the_guards() -> None:
    """One threshold: the guard's default, also the bench's."""
    import inspect

    from autotune.bench.backends import bench_backends

    assert DEFAULT_THRESHOLD == 0.99
    assert inspect.signature(bench_backends).parameters["threshold"].default == DEFAULT_THRESHOLD
