"""bench_preprocess: the documented figures, with sane values (no timing assertions)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from autotune.bench.preprocess import bench_preprocess
from autotune.errors import ConfigError

KEYS = {
    "n",
    "measured",
    "skipped",
    "model",
    "dataset",
    "image_size",
    "repeats",
    "reference_images_per_s_per_core",
    "fast_images_per_s_per_core",
    "speedup",
    "normalize_images_per_s_per_core",
    "fast_incl_normalize_images_per_s_per_core",
    "max_pixel_diff",
    "mean_pixel_diff",
    "max_grey_level_diff",
    "identical_value_fraction",
    "excluded_16bit",
    "cosine_n",
    "cosine_raw_min",
    "cosine_raw_mean",
    "cosine_centred_min",
    "cosine_centred_mean",
}


def test_bench_generated_corpus(tiny_model: str) -> None:
    """A generated corpus of 8: every figure present, flat, finite and plausible."""
    figures = bench_preprocess(n=8, model=tiny_model)
    assert set(figures) == KEYS
    assert all(isinstance(v, int | float | str) for v in figures.values())
    assert (figures["n"], figures["measured"], figures["skipped"], figures["cosine_n"]) == (8, 8, 0, 8)
    assert figures["excluded_16bit"] == 0
    assert figures["model"] == tiny_model
    for key in ("reference_images_per_s_per_core", "fast_images_per_s_per_core", "speedup"):
        assert figures[key] > 0 and math.isfinite(figures[key])
    ratio = figures["fast_images_per_s_per_core"] / figures["reference_images_per_s_per_core"]
    assert figures["speedup"] == pytest.approx(ratio)
    assert figures["fast_incl_normalize_images_per_s_per_core"] < figures["fast_images_per_s_per_core"]
    assert 0 <= figures["max_grey_level_diff"] <= 2
    assert 0 <= figures["mean_pixel_diff"] <= figures["max_pixel_diff"] < 0.05
    assert figures["identical_value_fraction"] > 0.99
    for key in ("cosine_raw_min", "cosine_raw_mean", "cosine_centred_min", "cosine_centred_mean"):
        assert 0.999 <= figures[key] <= 1.0 + 1e-9
    assert figures["cosine_raw_min"] <= figures["cosine_raw_mean"]


def test_bench_dataset_with_bad_files(small_dataset: Path, tmp_path: Path, tiny_model: str) -> None:
    """A folder with problem files: bad ones are counted as skipped, the rest measured."""
    from autotune.data import write_bad_images

    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(small_dataset.rglob("*.jpg"))[:4]:
        shutil.copy(path, folder / path.name)
    expected = write_bad_images(folder / "bad")
    bad = sum(reason != "ok" for reason in expected.values())
    total = 4 + len(expected)
    figures = bench_preprocess(n=total, dataset=folder, model=tiny_model)
    assert figures["n"] == total
    assert figures["skipped"] == bad
    assert figures["measured"] == total - bad
    assert figures["dataset"] == str(folder)
    # gray16.png is timed but kept out of the fidelity figures (the reference clips 16-bit on purpose).
    assert figures["excluded_16bit"] == 1
    assert figures["max_grey_level_diff"] <= 2
    assert figures["cosine_n"] == total - bad - 1


def test_bench_rejects_zero(tiny_model: str) -> None:
    """n must be positive."""
    with pytest.raises(ConfigError):
        bench_preprocess(n=0, model=tiny_model)
