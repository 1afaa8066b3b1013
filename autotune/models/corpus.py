"""The training corpus: labelled records, preprocessed once with the scan's fast path, and their captions."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autotune.data.records import ImageSource, Record
from autotune.errors import BadImageError
from autotune.models.contrastive import TEMPLATES
from autotune.models.tokenizer import build_offline_tokenizer
from autotune.preprocess import PreprocessSpec, fast_preprocess
from autotune.progress import Task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def cores() -> int:
    """Cores this process may run on (affinity-aware; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def select_records(records: Sequence[Record], seed: int, max_images: int) -> list[Record]:
    """Labelled records, all of them or a seeded subset of ``max_images`` (kept in id order)."""
    labelled = [r for r in records if r.label is not None]
    if len(labelled) <= max_images:
        return labelled
    keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(labelled))[:max_images])
    return [labelled[i] for i in keep]


def preprocess_all(
    source: ImageSource, records: Sequence[Record], spec: PreprocessSpec, task: Task
) -> tuple[np.ndarray, list[int]]:
    """Fast-preprocess every record into one uint8 ``[N, crop, crop, 3]`` array; return it and the kept rows.

    Undecodable images are dropped. Threads share the work (decoding and the resize release the GIL);
    each image's pixels do not depend on which thread made them.
    """
    import torch

    pixels = np.empty((len(records), spec.crop, spec.crop, 3), np.uint8)
    ok = np.zeros(len(records), bool)

    def work(i: int) -> None:
        """Preprocess record ``i`` into its row; an undecodable image leaves its row marked bad."""
        try:
            fast_preprocess(source.read_bytes(records[i]), spec, out=pixels[i])
            ok[i] = True
        except (BadImageError, OSError):
            pass

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one resize thread per worker, as a scan's producers run
    try:
        with ThreadPoolExecutor(max_workers=cores()) as pool:
            for _ in pool.map(work, range(len(records))):
                task.advance(1)
    finally:
        torch.set_num_threads(threads)
    kept = [i for i in range(len(records)) if ok[i]]
    if len(kept) == len(records):
        return pixels, kept
    return pixels[kept], kept


def tokenize_captions(labels: Sequence[str]) -> tuple[PreTrainedTokenizerBase, dict[str, torch.Tensor]]:
    """The offline tokenizer, and every (label, template) caption tokenised once.

    Row ``label * len(TEMPLATES) + template`` is that caption (the layout :class:`TrainingData` documents).
    """
    with tempfile.TemporaryDirectory(prefix="autotune-tok-") as tok_dir:
        tokenizer = build_offline_tokenizer(Path(tok_dir))
    captions = [t.format(label=label) for label in labels for t in TEMPLATES]
    tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
    return tokenizer, {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
