"""Reference (CLIPImageProcessor) vs fast preprocessing: images/s per core, their ratio, and fidelity."""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from autotune.bench.common import torch_threads
from autotune.data import make_dataset, open_source
from autotune.data.records import ImageSource
from autotune.errors import BadImageError, ConfigError, DataError
from autotune.models import image_tower, load_clip
from autotune.preprocess import (
    PreprocessSpec,
    fast_preprocess,
    normalize,
    reference_preprocess,
)
from autotune.progress import ProgressFactory, silent

DEFAULT_MODEL = "synthetic:clip-vit-base-patch32"
# Best of this many interleaved timed passes per path: noise on a shared machine only ever adds time.
REPEATS = 3
# The embedding forward (ViT-B/32 stand-in: ~5 images/s/core) caps the cosine figures at this many images.
COSINE_MAX_IMAGES = 64
_EMBED_BATCH = 32


def _read_corpus(source: ImageSource, n: int, progress: ProgressFactory) -> tuple[list[bytes], int]:
    """The encoded bytes of the first ``n`` images of a source, and how many could not be read."""
    records = source.records()[:n]
    task = progress("reading bytes", len(records))
    datas: list[bytes] = []
    unreadable = 0
    for record in records:
        try:
            datas.append(source.read_bytes(record))
        except OSError:
            unreadable += 1
        task.advance(1)
    task.close()
    return datas, unreadable


def _wall_time(fn: Callable[[], None]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def bench_preprocess(
    n: int = 200,
    dataset: Path | None = None,
    model: str = DEFAULT_MODEL,
    progress: ProgressFactory | None = None,
    image_column: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Measure the reference and the fast preprocessing side by side on the same ``n`` images.

    With no ``dataset``, a corpus of ``n`` images is generated into a temporary folder (``make_dataset``,
    seed 0). All bytes are read into memory first (I/O excluded). Both paths then run in this process at one
    torch thread, interleaved, best of :data:`REPEATS` passes each: ``reference_images_per_s_per_core``
    (``Image.open`` + the model's own image processor, float32 out), ``fast_images_per_s_per_core``
    (:func:`autotune.preprocess.fast_preprocess` into a preallocated uint8 batch, what a producer does) and
    ``speedup`` (fast / reference). ``normalize_images_per_s_per_core`` times the batched uint8 -> float
    step that the consumer runs, and ``fast_incl_normalize_images_per_s_per_core`` combines both on one core.

    Fidelity on the same images: ``max_pixel_diff`` / ``mean_pixel_diff`` (normalised units, normalised fast
    pixels vs the reference array), ``max_grey_level_diff`` (0-255 units) and ``identical_value_fraction``;
    embedding cosines through ``image_tower(load_clip(model))`` on the first ``cosine_n`` images (all cores,
    batches of 32): ``cosine_raw_*`` and ``cosine_centred_*`` (the reference embeddings' mean subtracted from
    both first; the telling figure for random-weight stand-ins, whose raw embeddings share a large common
    direction). ``skipped`` counts images that either path could not decode (or that could not be read);
    ``excluded_16bit`` counts 16-bit greyscale images, timed but left out of the fidelity figures because the
    reference clips them at 255 where the fast path deliberately scales them. ``progress`` (e.g.
    :func:`autotune.console.bar`) gets a task per pass; None reports nothing.

    Example:
        >>> figures = bench_preprocess(n=8, model="synthetic:tiny")  # doctest: +SKIP
        >>> figures["speedup"] > 1, figures["max_grey_level_diff"] <= 2  # doctest: +SKIP
        (True, True)
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    report = progress or silent
    with tempfile.TemporaryDirectory(prefix="autotune-bench-preprocess-") as tmp:
        if dataset is None:
            make_dataset(Path(tmp) / "corpus", n=n, seed=0, progress=progress)
            source = open_source(Path(tmp) / "corpus")
            label = f"generated ({n} images, seed 0)"
        else:
            source = open_source(dataset, image_column=image_column, split=split)
            label = str(dataset)
        datas, unreadable = _read_corpus(source, n, report)
    loaded = load_clip(model)
    processor = loaded.processor
    spec = PreprocessSpec.from_processor(processor)
    with torch_threads(1):
        good, fidelity = _fidelity_pass(datas, spec, processor, report)
        if not good:
            raise DataError(f"none of the {len(datas)} images could be decoded by both paths")
        timings = _timed_passes([datas[i] for i in good], spec, processor, report)
    cosine = _cosine_pass(fidelity.pop("_refs"), fidelity.pop("_fast"), spec, image_tower(loaded), report)

    ref_rate = len(good) / timings["reference"]
    fast_rate = len(good) / timings["fast"]
    norm_rate = len(good) / timings["normalize"]
    return {
        "n": len(datas) + unreadable,
        "measured": len(good),
        "skipped": len(datas) + unreadable - len(good),
        "model": model,
        "dataset": label,
        "image_size": spec.crop,
        "repeats": REPEATS,
        "reference_images_per_s_per_core": ref_rate,
        "fast_images_per_s_per_core": fast_rate,
        "speedup": fast_rate / ref_rate,
        "normalize_images_per_s_per_core": norm_rate,
        "fast_incl_normalize_images_per_s_per_core": 1.0 / (1.0 / fast_rate + 1.0 / norm_rate),
        **fidelity,
        **cosine,
    }


def _sixteen_bit(data: bytes) -> bool:
    """Whether an image is 16/32-bit greyscale, which the fast path scales and the reference clips."""
    try:
        mode = Image.open(io.BytesIO(data)).mode
    except Exception:  # undecodable images never reach here; be safe anyway
        return False
    return mode == "I" or mode.startswith("I;16")


def _fidelity_pass(
    datas: list[bytes], spec: PreprocessSpec, processor: Any, progress: ProgressFactory
) -> tuple[list[int], dict[str, Any]]:
    """Run both paths once (also the warm-up): indices both decode, and the pixel fidelity figures."""
    mean = np.asarray(spec.mean, np.float64)[:, None, None]
    std = np.asarray(spec.std, np.float64)[:, None, None]
    good: list[int] = []
    refs: list[np.ndarray] = []
    fasts: list[np.ndarray] = []
    max_norm = 0.0
    sum_norm = 0.0
    max_grey = 0
    identical = 0
    values = 0
    sixteen_bit = 0
    task = progress("fidelity (both paths)", len(datas))
    for i, data in enumerate(datas):
        task.advance(1)
        try:
            ref = reference_preprocess(data, processor)
            fast = fast_preprocess(data, spec)
        except BadImageError:
            continue
        good.append(i)
        if _sixteen_bit(data):
            sixteen_bit += 1  # timed, but the reference clips these on purpose: no fidelity to measure
            continue
        fast_norm = normalize(torch.from_numpy(fast)[None], spec)[0].numpy()
        diff = np.abs(fast_norm - ref)
        max_norm = max(max_norm, float(diff.max()))
        sum_norm += float(diff.sum(dtype=np.float64))
        # Back to 0-255 units: the reference array un-normalised is an integer grey level up to float error.
        ref_grey = np.rint((ref * std + mean) * 255.0).astype(np.int16)
        grey_diff = np.abs(ref_grey - fast.transpose(2, 0, 1).astype(np.int16))
        max_grey = max(max_grey, int(grey_diff.max()))
        identical += int((grey_diff == 0).sum())
        values += grey_diff.size
        if len(refs) < COSINE_MAX_IMAGES:
            refs.append(ref)
            fasts.append(fast)
    task.close()
    return good, {
        "max_pixel_diff": max_norm,
        "mean_pixel_diff": sum_norm / values if values else float("nan"),
        "max_grey_level_diff": max_grey,
        "identical_value_fraction": identical / values if values else float("nan"),
        "excluded_16bit": sixteen_bit,
        "_refs": refs,
        "_fast": fasts,
    }


def _timed_passes(
    datas: list[bytes], spec: PreprocessSpec, processor: Any, progress: ProgressFactory
) -> dict[str, float]:
    """Best-of-REPEATS wall times of the reference, the fast path and the batched normalisation."""
    batch = np.empty((len(datas), spec.crop, spec.crop, 3), np.uint8)
    batch_t = torch.from_numpy(batch)

    def reference() -> None:
        """The baseline over every image."""
        for data in datas:
            reference_preprocess(data, processor)

    def fast() -> None:
        """The producer's work over every image, written into the shared batch."""
        for i, data in enumerate(datas):
            fast_preprocess(data, spec, out=batch[i])

    def norm() -> None:
        """The consumer's uint8 -> float step, in engine-sized batches."""
        for start in range(0, len(datas), _EMBED_BATCH):
            normalize(batch_t[start : start + _EMBED_BATCH], spec)

    best = {"reference": float("inf"), "fast": float("inf"), "normalize": float("inf")}
    task = progress("timing (interleaved)", REPEATS)
    for _ in range(REPEATS):
        # Interleaved so that a slow patch of the machine's time hits both paths alike.
        best["reference"] = min(best["reference"], _wall_time(reference))
        best["fast"] = min(best["fast"], _wall_time(fast))
        best["normalize"] = min(best["normalize"], _wall_time(norm))
        task.advance(1)
    task.close()
    return best


def _cosine_pass(
    refs: list[np.ndarray],
    fasts: list[np.ndarray],
    spec: PreprocessSpec,
    tower: torch.nn.Module,
    progress: ProgressFactory,
) -> dict[str, Any]:
    """Embed the same images through both paths (all cores) and compare: raw and corpus-centred cosines."""
    m = len(refs)
    if m == 0:
        nan = float("nan")
        keys = ("cosine_raw_min", "cosine_raw_mean", "cosine_centred_min", "cosine_centred_mean")
        return {"cosine_n": 0, **dict.fromkeys(keys, nan)}
    task = progress("embedding (both paths)", m)
    ref_emb: list[torch.Tensor] = []
    fast_emb: list[torch.Tensor] = []
    with torch_threads(os.cpu_count() or 1), torch.inference_mode():
        for start in range(0, m, _EMBED_BATCH):
            stop = min(m, start + _EMBED_BATCH)
            ref_emb.append(tower(torch.from_numpy(np.stack(refs[start:stop]))).float())
            fast_emb.append(tower(normalize(torch.from_numpy(np.stack(fasts[start:stop])), spec)).float())
            task.advance(stop - start)
    task.close()
    a = torch.cat(ref_emb)
    b = torch.cat(fast_emb)
    raw = _cosines(a, b)
    centre = a.double().mean(0)
    # With a single image the centred vectors are zero (reference) and noise (fast): no meaningful figure.
    centred = _cosines(a.double() - centre, b.double() - centre) if m > 1 else torch.full((1,), float("nan"))
    return {
        "cosine_n": m,
        "cosine_raw_min": float(raw.min()),
        "cosine_raw_mean": float(raw.mean()),
        "cosine_centred_min": float(centred.min()),
        "cosine_centred_mean": float(centred.mean()),
    }
