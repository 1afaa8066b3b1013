"""Retrieval quality of a model on held-out generated images: zero-shot accuracy and precision@9 per label.

The held-out images are a fresh generated corpus (another seed than training), embedded exactly as a scan
embeds them (fast preprocessing to uint8, :func:`autotune.preprocess.normalize`, the image tower), and the
queries are ``"a photo of {label}"`` through the text tower.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data import make_dataset, open_source
from autotune.data.records import ImageSource, Record
from autotune.errors import BadImageError, DataError
from autotune.models.loading import LoadedClip, encode_texts, image_tower, load_clip
from autotune.preprocess import PreprocessSpec, fast_preprocess, normalize
from autotune.progress import ProgressFactory, silent

QUERY_TEMPLATE = "a photo of {label}"
TOP_K = 9
_BATCH = 32


def precision_at_k(scores: np.ndarray, image_labels: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per query row ``q`` of ``scores`` (queries x images): fraction of its top-``k`` images labelled ``q``.

    Ties are broken by image index (the engine's order: score descending, id ascending).

    Example:
        >>> precision_at_k(np.array([[0.9, 0.1, 0.8], [0.1, 0.9, 0.2]]), np.array([0, 1, 1]), k=2).tolist()
        [0.5, 1.0]
    """
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (image_labels[top] == np.arange(scores.shape[0])[:, None]).mean(axis=1)


def _embed_images(
    loaded: LoadedClip, source: ImageSource, records: list[Record], progress: ProgressFactory
) -> tuple[np.ndarray, list[int]]:
    """Embed records through the scan's path; return unit embeddings and the indices of those that decoded."""
    import torch

    spec = PreprocessSpec.from_processor(loaded.processor)
    tower = image_tower(loaded)
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    task = progress("bench quality", len(records))
    try:
        for start in range(0, len(records), _BATCH):
            batch = np.empty((min(_BATCH, len(records) - start), spec.crop, spec.crop, 3), np.uint8)
            k = 0
            for i in range(start, start + len(batch)):
                try:
                    fast_preprocess(source.read_bytes(records[i]), spec, out=batch[k])
                except (BadImageError, OSError):
                    continue
                kept.append(i)
                k += 1
            if k:
                with torch.inference_mode():
                    chunks.append(tower(normalize(torch.from_numpy(batch[:k]), spec)).numpy())
            task.advance(len(batch))
    finally:
        task.close()
    dim = loaded.embed_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), kept


def bench_quality(
    model: str,
    dataset: Path,
    n: int = 340,
    seed: int = 12345,
    progress: ProgressFactory | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy and precision@9 of ``model`` on ``n`` held-out images generated with ``seed``.

    The labels are those of ``dataset`` (the corpus the model was trained on); every one of them must occur
    among the held-out images (which show the generator's labels), else :class:`DataError`. Held-out images
    of labels the dataset lacks are left out. For each label, the query ``"a photo of {label}"`` ranks the
    held-out images; precision@9 is the fraction of its top 9 that show the label. Zero-shot accuracy is
    the fraction of images whose best-scoring label query is their own label.

    Returns flat figures (``zero_shot_accuracy``, ``mean_precision_at_9``, ``min_precision_at_9``,
    ``worst_label``, ``n`` held-out images evaluated, ``model``), plus ``labels`` and
    ``per_label_precision_at_9`` (a dict). With fewer than 9 held-out images per label (``n`` < 153 for the 17
    generated labels) precision@9 cannot reach 1. ``progress`` (e.g. :func:`autotune.console.bar`) gets one
    task, the embedding of the held-out images; None reports nothing.

    Example:
        >>> figures = bench_quality("/tmp/q/model", Path("/tmp/q/train"))  # doctest: +SKIP
        >>> figures["mean_precision_at_9"] >= 0.9  # doctest: +SKIP
        True
    """
    labels = open_source(dataset, split=split).labels()
    if not labels:
        raise DataError(f"{dataset} has no labelled images: bench quality needs the training corpus's labels")
    loaded = load_clip(model)
    with tempfile.TemporaryDirectory(prefix="autotune-heldout-") as tmp:
        heldout_dir = Path(tmp) / "heldout"
        # Generated without a task of its own: the embedding task follows within seconds.
        make_dataset(heldout_dir, n=n, seed=seed)
        heldout = open_source(heldout_dir)
        missing = sorted(set(labels) - set(heldout.labels()))
        if missing:
            raise DataError(
                f"held-out images lack {len(missing)} of the dataset's labels (e.g. {missing[0]!r}): "
                "bench quality works on generated corpora (autotune make-dataset), with --n of at least 17"
            )
        index = {label: i for i, label in enumerate(labels)}
        records = [r for r in heldout.records() if r.label in index]
        image_emb, kept = _embed_images(loaded, heldout, records, progress or silent)
    image_labels = np.array([index[str(records[i].label)] for i in kept], dtype=np.int64)
    text_emb = encode_texts(loaded, [QUERY_TEMPLATE.format(label=label) for label in labels]).numpy()
    scores = text_emb @ image_emb.T  # labels x images
    accuracy = float((scores.argmax(axis=0) == image_labels).mean()) if len(kept) else 0.0
    precision = precision_at_k(scores, image_labels, TOP_K)
    per_label = {label: round(float(p), 4) for label, p in zip(labels, precision, strict=True)}
    worst = int(np.argmin(precision))
    return {
        "model": model,
        "n": len(kept),
        "zero_shot_accuracy": round(accuracy, 4),
        "mean_precision_at_9": round(float(precision.mean()), 4),
        "min_precision_at_9": round(float(precision[worst]), 4),
        "worst_label": labels[worst],
        "labels": labels,
        "per_label_precision_at_9": per_label,
    }
