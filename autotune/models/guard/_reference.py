"""The guard's reference: a fixed sample of the dataset embedded by eager fp32, and its probe queries' top 9.

The sample (default 256 images) is evenly spaced over the scan set and fast-preprocessed; the probes are
"a photo of {label}" for up to 5 labels, or fixed generic texts when the data is unlabelled. A reference is
cached on disk (``cache_dir("guard")``) by dataset fingerprint, weights hash, sample size and crop.

:mod:`autotune.preprocess` and :mod:`autotune.models.loading` import torch (and transformers) at module
level, so they are imported where the reference is computed: the profile commands import this module and
must stay quick.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.data import ImageSource, open_source
from autotune.errors import ConfigError
from autotune.models import backends
from autotune.models.calibration import sample_pixels
from autotune.models.facts import ModelFacts, model_facts
from autotune.models.guard._figures import DEFAULT_SAMPLE, GUARD_FORMAT, GuardReference, probe_texts_for, top_rows
from autotune.models.guard._store import _cache_write, _digest, _guard_dir

if TYPE_CHECKING:
    pass

# Images per embed call while checking: small enough for any backend, large enough to amortise the call.
_BATCH = 32


def _embed_all(backend: backends.Backend, pixels: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    """Embed the sample in batches."""
    parts = [backend.embed(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return np.concatenate(parts).astype(np.float32)


def _reference(key: str, model_id: str, facts: ModelFacts, fingerprint: str, **parts: Any) -> GuardReference:
    """A reference of ``model_id`` on a dataset: its identity from the model's facts, its arrays from ``parts``."""
    return GuardReference(
        key=key, model_id=model_id, weights_hash=facts.weights_hash, synthetic=facts.synthetic,
        dataset_fingerprint=fingerprint, **parts,
    )  # fmt: skip


def _load_reference(path: Path, key: str, model_id: str, facts: ModelFacts, fingerprint: str) -> GuardReference | None:
    """The cached reference at ``path``, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    with contextlib.suppress(OSError, ValueError, KeyError), np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return _reference(
            key, model_id, facts, fingerprint,
            record_ids=data["record_ids"],
            pixels=data["pixels"],
            embeddings=data["embeddings"],
            probe_texts=list(meta["probe_texts"]),
            probe_embeddings=data["probe_embeddings"],
            probe_top=data["probe_top"],
        )  # fmt: skip
    return None


def _compute_reference(
    source: ImageSource, model_id: str, facts: ModelFacts, key: str, fingerprint: str, sample: int
) -> GuardReference:
    """Run eager fp32 on the sample and the text tower on the probes."""
    from autotune.models.loading import encode_texts, load_clip

    pixels, ids, labels = sample_pixels(source, sample, facts.preprocess)
    backend = backends.build_backend(backends.BackendSpec(model_id=model_id, backend=backends.REFERENCE_BACKEND))
    embeddings = _embed_all(backend, pixels)
    del backend  # free the image tower before the text tower loads
    texts = probe_texts_for(labels)
    probes = encode_texts(load_clip(model_id), texts).numpy().astype(np.float32)
    return _reference(
        key, model_id, facts, fingerprint,
        record_ids=ids,
        pixels=pixels,
        embeddings=embeddings,
        probe_texts=texts,
        probe_embeddings=probes,
        probe_top=top_rows(probes, embeddings),
    )  # fmt: skip


def _save_reference(path: Path, ref: GuardReference) -> None:
    """Cache the reference's arrays as one npz (best effort: a failed write is logged)."""

    def write(tmp: Path) -> None:
        """The arrays as one npz (no pickled objects: read back with allow_pickle=False)."""
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                record_ids=ref.record_ids,
                pixels=ref.pixels,
                embeddings=ref.embeddings,
                probe_embeddings=ref.probe_embeddings,
                probe_top=ref.probe_top,
                meta=np.asarray(json.dumps({"probe_texts": ref.probe_texts, "model_id": ref.model_id})),
            )

    _cache_write(path, write)


def build_reference(
    dataset: str | Path | ImageSource,
    model_id: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    image_column: str | None = None,
    cache: bool = True,
) -> GuardReference:
    """The guard's reference for a dataset (path or :class:`ImageSource`) and model, cached on disk.

    Keyed by (dataset fingerprint, weights hash, sample size, crop): the second call for the same dataset and
    model loads the arrays instead of running the model. ``cache=False`` neither reads nor writes the cache.

    Example:
        >>> ref = build_reference("data/", "synthetic:tiny", sample=32)  # doctest: +SKIP
        >>> ref.embeddings.shape, ref.probe_top.shape  # doctest: +SKIP
        ((32, 32), (5, 9))
    """
    if sample < 1:
        raise ConfigError(f"guard sample must be >= 1, got {sample}")
    source = dataset if isinstance(dataset, ImageSource) else open_source(dataset, image_column)
    facts = model_facts(model_id)
    fingerprint = source.fingerprint()
    key = _digest(
        {"format": GUARD_FORMAT, "dataset": fingerprint, "weights": facts.weights_hash, "sample": sample,
         "crop": facts.preprocess.crop}
    )
    path = _guard_dir() / f"reference-{key}.npz"
    cached = _load_reference(path, key, model_id, facts, fingerprint) if cache else None
    if cached is not None:
        return cached
    ref = _compute_reference(source, model_id, facts, key, fingerprint, sample)
    if cache:
        _save_reference(path, ref)
    return ref
