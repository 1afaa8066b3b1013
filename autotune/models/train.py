"""Train a small CLIP on a generated corpus, so that offline rankings mean something.

The ``synthetic:`` stand-ins have random weights: every image embeds alike, and no test can tell a correct
ranking from a broken one. :func:`train_model` fits a small CLIP (ViT 4 x 128 image tower, 2 x 128 text tower)
contrastively on the corpus's images and ``"a photo of {label}"``-style captions in about two minutes on
two CPU cores. The result is an ordinary transformers checkpoint (safetensors + CLIP processor + tokenizer):
``load_clip(path)`` and ``--model PATH`` load it like any CLIP model, and nothing downstream knows it is
special.

Images are preprocessed once, up front, with the scan's own fast path
(:func:`autotune.preprocess.fast_preprocess` to uint8, :func:`autotune.preprocess.normalize` per batch), so
training and inference see the same pixels.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from autotune.atomic import atomic_dir
from autotune.errors import BadImageError, DataError

#: Caption templates; the first is the query form used at retrieval time and is drawn most often.
TEMPLATES: tuple[str, ...] = (
    "a photo of {label}",
    "a picture of {label}",
    "an image of {label}",
    "a close-up photo of {label}",
    "{label}",
)
_TEMPLATE_WEIGHTS = np.array([0.4, 0.15, 0.15, 0.15, 0.15])

#: Optimisation steps by default: about two minutes on two idle CPU cores (0.2 s per batch of 64).
DEFAULT_STEPS = 600
BATCH_SIZE = 64
LEARNING_RATE = 5e-4
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05
#: At most this many images are preprocessed and kept in memory (uint8, 150 KB each).
MAX_IMAGES = 4096
MARKER_NAME = "autotune_trained.json"
PROJECTION_DIM = 128
_MAX_LOGIT_SCALE = math.log(100.0)


def trained_config(tokenizer: Any) -> Any:
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


# -------------------------------------------------------------------------------------------- data


def _select_records(records: Sequence[Any], seed: int, max_images: int) -> list[Any]:
    """Labelled records, all of them or a seeded subset of ``max_images`` (kept in id order)."""
    labelled = [r for r in records if r.label is not None]
    if len(labelled) <= max_images:
        return labelled
    keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(labelled))[:max_images])
    return [labelled[i] for i in keep]


def _preprocess_all(
    source: Any, records: Sequence[Any], spec: Any, advance: Callable[[int], None]
) -> tuple[np.ndarray, list[int]]:
    """Fast-preprocess every record into one uint8 ``[N, crop, crop, 3]`` array; return it and the kept rows.

    Undecodable images are dropped. Threads share the work (decoding and the resize release the GIL);
    each image's pixels do not depend on which thread made them.
    """
    import torch

    from autotune.preprocess import fast_preprocess

    pixels = np.empty((len(records), spec.crop, spec.crop, 3), np.uint8)
    ok = np.zeros(len(records), bool)

    def work(i: int) -> None:
        try:
            fast_preprocess(source.read_bytes(records[i]), spec, out=pixels[i])
            ok[i] = True
        except (BadImageError, OSError):
            pass

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one resize thread per worker, as a scan's producers run
    try:
        with ThreadPoolExecutor(max_workers=_cores()) as pool:
            for _ in pool.map(work, range(len(records))):
                advance(1)
    finally:
        torch.set_num_threads(threads)
    kept = [i for i in range(len(records)) if ok[i]]
    if len(kept) == len(records):
        return pixels, kept
    return pixels[kept], kept


# ---------------------------------------------------------------------------------------- progress


class _Bar:
    """A Rich progress bar on stderr with a ``loss`` field, or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        """Remember whether to show anything."""
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> _Bar:
        """Start the live display."""
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        return self

    def task(self, description: str, total: int) -> Callable[..., None]:
        """Add a task; return ``advance(k, info="")``."""
        if self._progress is None:
            return lambda k=1, info="": None
        task_id = self._progress.add_task(description, total=total, info="")

        def advance(k: int = 1, info: str = "") -> None:
            self._progress.update(task_id, advance=k, info=info)

        return advance

    def __exit__(self, *exc: object) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()


# ---------------------------------------------------------------------------------------- training


def _lr_at(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return LEARNING_RATE * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: Any) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms, embeddings or the logit scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def label_aware_loss(logits: Any, image_labels: Any, caption_labels: Any) -> Any:
    """Symmetric InfoNCE where every caption of an image's label is a positive, never a negative.

    ``logits`` is images x captions (already scaled); ``image_labels`` and ``caption_labels`` give each row's
    and each column's label (every caption's label must occur among the images). Image -> caption: a
    cross-entropy over the batch's labels, a label's logit being the log-mean-exp of its captions' logits
    (mean, not sum, so a label with more distinct captions in the batch gets no bonus). Caption -> image:
    multi-positive InfoNCE, ``-log`` of the softmax mass on the images of the caption's label. The gradient
    never lowers the score of a same-label pair: duplicates of a label in a batch are not pushed apart.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
        >>> float(label_aware_loss(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))) < 1e-3
        True
    """
    import torch
    from torch.nn import functional as F

    batch_labels, label_of = torch.unique(image_labels, return_inverse=True)
    same = caption_labels[None, :] == batch_labels[:, None]  # batch labels x captions
    masked = logits[:, None, :].masked_fill(~same[None], float("-inf"))  # images x labels x captions
    label_logits = torch.logsumexp(masked, dim=-1) - same.sum(dim=1).clamp(min=1).log()[None, :]
    loss_images = F.cross_entropy(label_logits, label_of)
    per_caption = logits.T  # captions x images
    positive = caption_labels[:, None] == image_labels[None, :]
    on_positives = torch.logsumexp(per_caption.masked_fill(~positive, float("-inf")), dim=1)
    loss_texts = (torch.logsumexp(per_caption, dim=1) - on_positives).mean()
    return 0.5 * (loss_images + loss_texts)


def _cores() -> int:
    """Cores this process may run on (affinity-aware; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"refusing to write the model into {out}: it exists and is not an empty folder")


def _save(model: Any, out: Path, marker: dict[str, Any]) -> None:
    """Write the checkpoint (safetensors), processor, tokenizer and marker into a temp folder, then move it."""
    from transformers import CLIPProcessor

    from autotune.models.synthetic import _image_processor, _relax_permissions, quiet_progress
    from autotune.models.tokenizer import build_offline_tokenizer

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


def _fit(
    model: Any,
    pixels: Any,
    image_labels: Any,
    input_ids: Any,
    attention: Any,
    spec: Any,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    deadline: float | None,
    advance: Callable[..., None],
) -> tuple[list[float], bool]:
    """Run the optimisation steps in place on ``model``; return the losses and whether the deadline cut them.

    ``pixels`` are uint8 NHWC images, ``image_labels`` their label indices, ``input_ids``/``attention`` the
    tokenised captions (row ``label * len(TEMPLATES) + template``). Batches, flips and templates come from a
    NumPy generator seeded with ``seed``: the same inputs give the same weights. At least one step runs.
    """
    import torch
    from torch.nn import functional as F

    from autotune.models.loading import ImageTower
    from autotune.preprocess import normalize

    model.train()
    tower = ImageTower(model)
    # fused: one pass over all parameters, about 3x faster than the per-tensor loop on CPU
    optimizer = torch.optim.AdamW(
        _param_groups(model), lr=LEARNING_RATE, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    rng = np.random.default_rng([seed, 0])
    n = len(pixels)
    batch = min(batch_size, n)
    order, cursor = rng.permutation(n), 0
    losses: list[float] = []
    for step in range(steps):
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        idx = torch.from_numpy(order[cursor : cursor + batch].copy())
        cursor += batch
        flips = torch.from_numpy(rng.random(batch) < 0.5)
        templates = torch.from_numpy(rng.choice(len(TEMPLATES), size=batch, p=_TEMPLATE_WEIGHTS))

        images = pixels[idx]
        images[flips] = images[flips].flip(2)  # NHWC: dim 2 is the width
        y = image_labels[idx]
        # The batch's distinct captions; every caption of an image's label is one of its positives.
        rows = torch.unique(y * len(TEMPLATES) + templates)

        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps)
        img = tower(normalize(images, spec))
        text = model.text_model(input_ids=input_ids[rows], attention_mask=attention[rows])
        txt = F.normalize(model.text_projection(text.pooler_output), dim=-1)
        scale = model.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
        loss = label_aware_loss(scale * img @ txt.T, y, rows // len(TEMPLATES))

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        advance(1, info=f"loss {losses[-1]:.3f}")
        if deadline is not None and step + 1 < steps and time.perf_counter() >= deadline:
            return losses, True
    return losses, False


def train_model(
    dataset: Path,
    out: Path,
    *,
    seed: int = 0,
    minutes: float | None = None,
    steps: int | None = None,
    progress: bool = True,
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
    fingerprint, labels, seed, steps, seconds, final loss, templates).

    Returns ``out``, ``steps`` (run), ``seconds`` (optimisation), ``preprocess_seconds``, ``final_loss``
    (mean of the last 10 steps), ``images``, ``skipped`` (undecodable), ``labels`` (count), ``stopped_early``.

    Raises :class:`DataError` for a dataset without labelled images, an ``out`` that exists and is not an
    empty folder, or non-positive ``steps``/``batch_size``/``threads``/``minutes``.

    Example:
        >>> summary = train_model(Path("/tmp/q/train"), Path("/tmp/q/model"), progress=False)  # doctest: +SKIP
        >>> summary["steps"], summary["stopped_early"]  # doctest: +SKIP
        (600, False)
    """
    import torch
    from transformers import CLIPModel

    from autotune.data import open_source
    from autotune.models.synthetic import _image_processor
    from autotune.models.tokenizer import build_offline_tokenizer
    from autotune.preprocess import PreprocessSpec

    out = Path(out).expanduser()
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise DataError(f"make-model needs at least one training step (steps={steps})")
    if batch_size < 1:
        raise DataError(f"make-model needs a positive batch size (batch_size={batch_size})")
    if threads is not None and threads < 1:
        raise DataError(f"make-model needs at least one thread (threads={threads})")
    if minutes is not None and minutes <= 0:
        raise DataError(f"--minutes must be positive (got {minutes})")
    _check_out(out)
    source = open_source(dataset, split=split)
    records = _select_records(source.records(), seed, max_images)
    labels = sorted({r.label for r in records})
    if not labels:
        raise DataError(
            f"{source.describe()} has no labelled images: training needs images in one folder per label"
        )
    started = time.perf_counter()
    # The processor saved with the model: the scan reads its spec back, so train and inference agree.
    spec = PreprocessSpec.from_processor(_image_processor())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _cores())
    try:
        with _Bar(progress) as bar:
            pixels, kept = _preprocess_all(source, records, spec, bar.task("preprocess", len(records)))
            if not kept:
                raise DataError(f"none of the {len(records)} labelled images of {source.describe()} decode")
            label_index = {label: i for i, label in enumerate(labels)}
            image_labels = torch.tensor([label_index[records[i].label] for i in kept], dtype=torch.long)
            preprocess_s = time.perf_counter() - started

            # Every (label, template) caption, tokenised once: row = label * len(TEMPLATES) + template.
            with tempfile.TemporaryDirectory(prefix="autotune-tok-") as tok_dir:
                tokenizer = build_offline_tokenizer(Path(tok_dir))
            captions = [t.format(label=label) for label in labels for t in TEMPLATES]
            tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = CLIPModel(trained_config(tokenizer))
            train_start = time.perf_counter()
            losses, stopped_early = _fit(
                model,
                torch.from_numpy(pixels),
                image_labels,
                tokens["input_ids"],
                tokens["attention_mask"],
                spec,
                seed=seed,
                steps=steps,
                batch_size=batch_size,
                deadline=None if minutes is None else train_start + 60.0 * minutes,
                advance=bar.task("make-model", steps),
            )
            train_s = time.perf_counter() - train_start
    finally:
        torch.set_num_threads(old_threads)

    done = len(losses)
    final_loss = float(np.mean(losses[-10:])) if losses else float("nan")
    model.eval()
    marker = {
        "dataset_fingerprint": source.fingerprint(),
        "labels": labels,
        "seed": seed,
        "steps": done,
        "seconds": round(train_s, 2),
        "final_loss": round(final_loss, 4),
        "templates": list(TEMPLATES),
    }
    _save(model, out, marker)
    return {
        "out": str(out),
        "steps": done,
        "seconds": round(train_s, 2),
        "preprocess_seconds": round(preprocess_s, 2),
        "final_loss": round(final_loss, 4),
        "images": len(kept),
        "skipped": len(records) - len(kept),
        "labels": len(labels),
        "stopped_early": stopped_early,
    }
