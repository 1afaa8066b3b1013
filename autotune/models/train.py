"""Train a small CLIP on a generated corpus, so that offline rankings mean something.

The ``synthetic:`` stand-ins have random weights: every image embeds alike, and no test can tell a correct
ranking from a broken one. :func:`train_model` fits a small CLIP (ViT 4 x 128 image tower, 2 x 128 text tower)
contrastively on the corpus's images and ``"a photo of {label}"``-style captions in about a minute on
two CPU cores. The result is an ordinary transformers checkpoint (safetensors + CLIP processor + tokenizer):
``load_clip(path)`` and ``--model PATH`` load it like any CLIP model, and nothing downstream knows it is
special.

Images are preprocessed once, up front, with the scan's own fast path
(:func:`autotune.preprocess.fast_preprocess` to uint8, :func:`autotune.preprocess.normalize` per batch), so
training and inference see the same pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.atomic import atomic_dir
from autotune.data import open_source
from autotune.data.records import ImageSource, Record
from autotune.errors import DataError
from autotune.models.contrastive import TEMPLATES, TrainingData, fit, label_aware_loss
from autotune.models.corpus import cores, preprocess_all, select_records, tokenize_captions
from autotune.models.synthetic import _image_processor, _relax_permissions, quiet_progress
from autotune.models.tokenizer import build_offline_tokenizer
from autotune.preprocess import PreprocessSpec
from autotune.progress import ProgressFactory, silent

if TYPE_CHECKING:
    import torch
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_STEPS",
    "MARKER_NAME",
    "MAX_IMAGES",
    "PROJECTION_DIM",
    "TEMPLATES",
    "label_aware_loss",
    "train_model",
    "trained_config",
]

#: Optimisation steps by default: about a minute on two idle CPU cores (0.2 s per batch of 64). Measured on
#: the default corpus: 250 steps already put 9 of 9 right for 15 of the 17 labels (8 of 9 for the others), and
#: 600 steps, the old default, doubled `make demo`'s training for a loss of 0.001.
DEFAULT_STEPS = 300
BATCH_SIZE = 64
#: At most this many images are preprocessed and kept in memory (uint8, 150 KB each).
MAX_IMAGES = 4096
MARKER_NAME = "autotune_trained.json"
PROJECTION_DIM = 128


def trained_config(tokenizer: Any) -> CLIPConfig:
    """The ``CLIPConfig`` of the trained model: ViT 4 x 128 (patch 32, 224 px), text 2 x 128, projection 128.

    Special token ids are the tokenizer's (the offline tokenizer pads with ``<|endoftext|>``, so pooling
    takes the first end-of-text token).

    Example:
        >>> from autotune.models.tokenizer import build_offline_tokenizer
        >>> cfg = trained_config(build_offline_tokenizer(Path("/tmp/tok")))  # doctest: +SKIP
        >>> cfg.vision_config.num_hidden_layers, cfg.text_config.hidden_size  # doctest: +SKIP
        (4, 128)
    """
    from transformers import CLIPConfig

    text_config = {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": PROJECTION_DIM,
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
    }
    vision_config = {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 32,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "projection_dim": PROJECTION_DIM,
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=PROJECTION_DIM,
        logit_scale_init_value=2.6592,
    )


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"refusing to write the model into {out}: it exists and is not an empty folder")


def _save(model: CLIPModel, out: Path, marker: dict[str, Any]) -> None:
    """Write the checkpoint (safetensors), processor, tokenizer and marker into a temp folder, then move it."""
    from transformers import CLIPProcessor

    # atomic_dir fsyncs every file before the rename: a crash leaves no model or a whole one, never a folder
    # whose marker says "complete" over weights that never reached the disk.
    with atomic_dir(out) as tmp:
        with quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = build_offline_tokenizer(tmp)
        image_processor = _image_processor()
        image_processor.save_pretrained(tmp)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)  # fails here if they clash
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _relax_permissions(tmp)
        _check_out(out)
        if out.exists():
            out.rmdir()  # empty (checked): rename() would replace it anyway, this keeps the error clear


@dataclass(frozen=True)
class _Corpus:
    """The labelled images chosen for training, with the source they came from."""

    source: ImageSource
    records: list[Record]
    labels: list[str]


def train_model(
    dataset: Path,
    out: Path,
    *,
    seed: int = 0,
    minutes: float | None = None,
    steps: int | None = None,
    progress: ProgressFactory | None = None,
    batch_size: int = BATCH_SIZE,
    max_images: int = MAX_IMAGES,
    threads: int | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Train a small CLIP contrastively on a labelled image corpus; save it as a CLIP checkpoint in ``out``.

    Images come from ``open_source(dataset)`` (label = first folder), preprocessed once with the scan's fast
    path; captions are :data:`TEMPLATES` filled with the label, one drawn per image and step. The loss is a
    symmetric InfoNCE with a learnable logit scale and label-aware targets (:func:`label_aware_loss`): every
    caption of an image's label is a positive, so images of one label in a batch are never pushed apart.

    Deterministic for a seed (on a given machine and thread count): weights are initialised under
    ``torch.manual_seed(seed)``, batches, flips and templates come from a NumPy generator seeded with
    ``seed``, and training runs a fixed number of ``steps`` (default :data:`DEFAULT_STEPS`, about two
    minutes on two idle cores) of ``batch_size`` images. ``minutes`` is only a wall-clock cap: stopping on
    it sets ``stopped_early`` and makes the weights machine-dependent. ``threads`` defaults to every core
    this process may use (fastest on an idle machine; on a machine busy with other work, one thread can be
    several times faster than two contending ones). At most ``max_images`` images (a seeded subset) are used.

    ``out`` gets ``model.safetensors`` + ``config.json``, the CLIP image processor (224 px bicubic, OpenAI
    mean/std, as the stand-ins use), the offline tokenizer, and ``autotune_trained.json`` (dataset
    fingerprint, labels, seed, steps, seconds, final loss, templates). ``progress`` (e.g.
    :func:`autotune.console.bar`) gets a ``preprocess`` and a ``make-model`` task; None reports nothing.

    Returns ``out``, ``steps`` (run), ``seconds`` (optimisation), ``preprocess_seconds``, ``final_loss``
    (mean of the last 10 steps), ``images``, ``skipped`` (undecodable), ``labels`` (count), ``stopped_early``.

    Raises :class:`DataError` for a dataset without labelled images, an ``out`` that exists and is not an
    empty folder, or non-positive ``steps``/``batch_size``/``threads``/``minutes``.

    Example:
        >>> summary = train_model(Path("/tmp/q/train"), Path("/tmp/q/model"))  # doctest: +SKIP
        >>> summary["steps"], summary["stopped_early"]  # doctest: +SKIP
        (600, False)
    """
    import torch

    out = Path(out).expanduser()
    steps = DEFAULT_STEPS if steps is None else int(steps)
    _check_args(steps, batch_size, threads, minutes)
    _check_out(out)
    corpus = _corpus(dataset, split, seed, max_images)
    report = progress or silent
    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or cores())
    try:
        pixels, image_labels, kept, spec = _preprocessed(corpus, report)
        preprocess_s = time.perf_counter() - started
        tokenizer, tokens = tokenize_captions(corpus.labels)
        data = TrainingData(pixels, image_labels, tokens["input_ids"], tokens["attention_mask"], spec)
        model, train_s, losses, stopped_early = _train(
            data, tokenizer, seed=seed, steps=steps, batch_size=batch_size, minutes=minutes, progress=report
        )
    finally:
        torch.set_num_threads(old_threads)
    final_loss = float(np.mean(losses[-10:])) if losses else float("nan")
    model.eval()
    _save(model, out, _marker(corpus, seed, len(losses), train_s, final_loss))
    return {
        "out": str(out),
        "steps": len(losses),
        "seconds": round(train_s, 2),
        "preprocess_seconds": round(preprocess_s, 2),
        "final_loss": round(final_loss, 4),
        "images": len(kept),
        "skipped": len(corpus.records) - len(kept),
        "labels": len(corpus.labels),
        "stopped_early": stopped_early,
    }


def _marker(corpus: _Corpus, seed: int, steps: int, seconds: float, final_loss: float) -> dict[str, Any]:
    """What ``autotune_trained.json`` records: the data trained on, the seed, steps, seconds and loss."""
    return {
        "dataset_fingerprint": corpus.source.fingerprint(),
        "labels": corpus.labels,
        "seed": seed,
        "steps": steps,
        "seconds": round(seconds, 2),
        "final_loss": round(final_loss, 4),
        "templates": list(TEMPLATES),
    }


def _check_args(steps: int, batch_size: int, threads: int | None, minutes: float | None) -> None:
    """Refuse non-positive steps, batch size, threads or minutes."""
    if steps < 1:
        raise DataError(f"make-model needs at least one training step (steps={steps})")
    if batch_size < 1:
        raise DataError(f"make-model needs a positive batch size (batch_size={batch_size})")
    if threads is not None and threads < 1:
        raise DataError(f"make-model needs at least one thread (threads={threads})")
    if minutes is not None and minutes <= 0:
        raise DataError(f"--minutes must be positive (got {minutes})")


def _corpus(dataset: Path, split: str | None, seed: int, max_images: int) -> _Corpus:
    """Open the dataset and pick its labelled images; refuse a dataset without any."""
    source = open_source(dataset, split=split)
    records = select_records(source.records(), seed, max_images)
    labels = sorted({r.label for r in records if r.label is not None})
    if not labels:
        raise DataError(
            f"{source.describe()} has no labelled images: training needs images in one folder per label"
        )
    return _Corpus(source, records, labels)


def _preprocessed(
    corpus: _Corpus, progress: ProgressFactory
) -> tuple[torch.Tensor, torch.Tensor, list[int], PreprocessSpec]:
    """The corpus preprocessed once: uint8 pixels, their label indices, the rows that decoded, and the spec."""
    import torch

    # The processor saved with the model: the scan reads its spec back, so train and inference agree.
    spec = PreprocessSpec.from_processor(_image_processor())
    task = progress("preprocess", len(corpus.records))
    try:
        pixels, kept = preprocess_all(corpus.source, corpus.records, spec, task)
    finally:
        task.close()
    if not kept:
        raise DataError(f"none of the {len(corpus.records)} labelled images of {corpus.source.describe()} decode")
    label_index = {label: i for i, label in enumerate(corpus.labels)}
    # Every selected record has a label (select_records keeps labelled ones only).
    image_labels = torch.tensor([label_index[str(corpus.records[i].label)] for i in kept], dtype=torch.long)
    return torch.from_numpy(pixels), image_labels, kept, spec


def _train(
    data: TrainingData,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    minutes: float | None,
    progress: ProgressFactory,
) -> tuple[CLIPModel, float, list[float], bool]:
    """A fresh model, initialised under ``seed`` and fitted; with its training seconds, losses and early stop."""
    import torch
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(trained_config(tokenizer))
    train_start = time.perf_counter()
    task = progress("make-model", steps)
    try:
        losses, stopped_early = fit(
            model,
            data,
            seed=seed,
            steps=steps,
            batch_size=batch_size,
            deadline=None if minutes is None else train_start + 60.0 * minutes,
            task=task,
        )
    finally:
        task.close()
    return model, time.perf_counter() - train_start, losses, stopped_early
