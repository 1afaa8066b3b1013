"""bench quality: held-out zero-shot accuracy and precision@9 of a trained model (figures, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotune.bench.quality import bench_quality, precision_at_k
from autotune.data import LABELS
from autotune.errors import DataError

FLAT = ("zero_shot_accuracy", "mean_precision_at_9", "min_precision_at_9")


@pytest.fixture(scope="module")
def trained(trained_model: str) -> Path:
    """The session's quick trained model (shared with the rankings tests)."""
    return Path(trained_model)


@pytest.fixture(scope="module")
def figures(trained: Path) -> dict:
    """bench_quality on 68 held-out images (4 per label)."""
    corpus = trained.parent / "train"
    return bench_quality(str(trained), corpus, n=68, seed=777)


def test_figures(figures: dict, trained: Path) -> None:
    """Keys, types and ranges of the report; flat figures first, the per-label dict for JSON."""
    assert set(figures) == {
        "model", "n", "zero_shot_accuracy", "mean_precision_at_9", "min_precision_at_9", "worst_label",
        "labels", "per_label_precision_at_9",
    }
    assert figures["model"] == str(trained) and figures["n"] == 68
    assert figures["labels"] == LABELS
    for key in FLAT:
        assert isinstance(figures[key], float) and 0.0 <= figures[key] <= 1.0, key
    per_label = figures["per_label_precision_at_9"]
    assert set(per_label) == set(LABELS)
    assert all(0.0 <= v <= 1.0 for v in per_label.values())
    # With 4 images per label, precision@9 is at most 4/9.
    assert max(per_label.values()) <= 4 / 9 + 1e-6
    assert figures["min_precision_at_9"] == min(per_label.values()) == per_label[figures["worst_label"]]
    assert figures["mean_precision_at_9"] == pytest.approx(np.mean(list(per_label.values())), abs=1e-3)
    # A trained model, not a random one: most images find their own label.
    assert figures["zero_shot_accuracy"] >= 0.6
    json.dumps(figures)  # the CLI's --json prints it as is


def test_refuses_labels_the_held_out_images_lack(trained: Path, tmp_path: Path) -> None:
    """A dataset whose labels the generator never draws cannot be evaluated: one-line DataError."""
    from PIL import Image

    (tmp_path / "Canis lupus").mkdir()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(tmp_path / "Canis lupus" / "a.jpg")
    with pytest.raises(DataError, match="held-out images lack"):
        bench_quality(str(trained), tmp_path, n=17)


def test_precision_at_k_ties_and_counts() -> None:
    """precision@k counts own-label images among the top k, ties broken by image index."""
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.0, 0.9, 0.8, 0.7]])
    labels = np.array([1, 0, 0, 1])
    assert precision_at_k(scores, labels, k=2).tolist() == [0.5, 0.0]
    assert precision_at_k(scores, labels, k=9).tolist() == [0.5, 0.5]  # k capped at the image count


def test_prompts_from_an_inaturalist_split(trained: Path, tmp_path: Path) -> None:
    """An iNaturalist split's labels are species names, so its prompts are "a photo of <species>"."""
    from autotune.data import make_dataset

    split = tmp_path / "train_mini"
    make_dataset(split, n=17, seed=3, format="inat")
    figures = bench_quality(str(trained), split, n=34, seed=777)
    assert figures["labels"] == LABELS and set(figures["per_label_precision_at_9"]) == set(LABELS)
