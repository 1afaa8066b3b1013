"""Tests of the synthetic corpus generator and the broken-image set."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotune.data import LABELS, SOURCE_PHOTOS, FolderSource, HFDatasetSource, make_dataset, write_bad_images
from autotune.errors import DataError


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the arrow files that `load_dataset` builds out of the user's Hugging Face cache."""
    import datasets

    path = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", path)
    return path


def _files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every JPEG under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_source_photos_are_17_distinct_offline_photos() -> None:
    """17 labels, one loader each, no duplicate picture, distinct genus names, sorted LABELS."""
    import skimage.data

    assert len(SOURCE_PHOTOS) == 17
    assert len(set(SOURCE_PHOTOS.values())) == 17
    assert "cat" not in SOURCE_PHOTOS.values()  # same picture as chelsea
    assert all(hasattr(skimage.data, loader) for loader in SOURCE_PHOTOS.values())
    assert len({label.split()[0] for label in SOURCE_PHOTOS}) == 17
    assert LABELS == sorted(SOURCE_PHOTOS)
    assert SOURCE_PHOTOS["Felis catus"] == "chelsea"
    assert SOURCE_PHOTOS["Coffea arabica"] == "coffee"


def test_layout_metadata_and_summary(small_dataset: Path) -> None:
    """OUT/<label>/<id:07d>.jpg for 48 images, metadata.json, all 17 labels present."""
    files = _files(small_dataset)
    assert len(files) == 48
    for i in range(48):
        assert f"{LABELS[i % 17]}/{i:07d}.jpg" in files
    meta = json.loads((small_dataset / "metadata.json").read_text())
    assert meta == {"generator": "autotune.make_dataset", "n": 48, "seed": 1, "labels": LABELS}
    assert FolderSource(small_dataset).labels() == LABELS


def test_images_are_rgb_with_long_side_500_and_varied_quality(small_dataset: Path) -> None:
    """Every image is an RGB JPEG with long side exactly 500; aspect ratios and quality tables vary."""
    aspects, quant_tables = set(), set()
    for path in small_dataset.rglob("*.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert max(im.size) == 500
            aspects.add(round(im.size[0] / im.size[1], 2))
            quant_tables.add(tuple(im.quantization[0]))  # type: ignore[attr-defined]
    assert len(aspects) > 20
    assert len(quant_tables) > 5


def test_grayscale_sources_come_out_tinted(small_dataset: Path) -> None:
    """A grayscale source (the moon) becomes RGB whose channels differ (colour jitter tint)."""
    with Image.open(small_dataset / "Luna craterosa" / f"{LABELS.index('Luna craterosa'):07d}.jpg") as im:
        pixels = np.asarray(im, dtype=np.float32)
    means = pixels.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() > 1.0


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    """Generation is deterministic per seed."""
    make_dataset(tmp_path / "a", n=20, seed=3)
    make_dataset(tmp_path / "b", n=20, seed=3)
    make_dataset(tmp_path / "c", n=20, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_parallel_generation_matches_serial(tmp_path: Path) -> None:
    """Spawned workers write exactly the bytes a single process writes."""
    serial = make_dataset(tmp_path / "serial", n=200, seed=7, workers=1)
    parallel = make_dataset(tmp_path / "parallel", n=200, seed=7, workers=2)
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")
    assert serial["bytes"] == parallel["bytes"]
    assert set(parallel) == {"out", "format", "images", "labels", "bytes", "mb", "seconds", "images_per_s"}
    assert parallel["images"] == 200 and parallel["labels"] == 17


def test_fewer_images_than_labels(tmp_path: Path) -> None:
    """With n < 17 only the first n labels exist, and the summary says so."""
    summary = make_dataset(tmp_path / "few", n=5, seed=0)
    assert summary["labels"] == 5
    assert sorted(p.name for p in (tmp_path / "few").iterdir() if p.is_dir()) == LABELS[:5]


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    """An existing non-empty folder or a file is refused; an existing empty folder is fine."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        make_dataset(busy, n=2)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError):
        make_dataset(a_file, n=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_dataset(empty, n=2)["images"] == 2


class _Recorder:
    """A progress factory that records every task's description, total, advances and closing."""

    def __init__(self) -> None:
        """No task yet."""
        self.tasks: list[tuple[str, int]] = []
        self.done = 0
        self.closed = 0

    def __call__(self, description: str, total: int) -> _Recorder:
        """Start a task (this recorder is its own task)."""
        self.tasks.append((description, total))
        return self

    def advance(self, k: int = 1, info: str = "") -> None:
        """Count ``k`` more units."""
        self.done += k

    def update(self, completed: int, info: str = "") -> None:
        """Set the count."""
        self.done = completed

    def close(self) -> None:
        """Count the closing."""
        self.closed += 1


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "parallel"])
def test_progress_reports_every_image(tmp_path: Path, workers: int) -> None:
    """One make-dataset task, advanced once per image (serially or by chunks), then closed."""
    recorder = _Recorder()
    n = 200 if workers > 1 else 3  # workers are used from 200 images up
    assert make_dataset(tmp_path / "rec", n=n, progress=recorder, workers=workers)["images"] == n
    assert recorder.tasks == [("make-dataset", n)]
    assert (recorder.done, recorder.closed) == (n, 1)


def test_console_bar_runs(tmp_path: Path) -> None:
    """The console's Rich bar renders the task without failing."""
    from autotune.console import bar

    assert make_dataset(tmp_path / "bar", n=3, progress=bar)["images"] == 3


def test_loads_as_folder_and_as_hf_imagefolder(small_dataset: Path, hf_cache: Path) -> None:
    """The corpus loads both ways with the same records count, labels and bytes."""
    folder = FolderSource(small_dataset)
    hf = HFDatasetSource(small_dataset, mode="imagefolder")
    assert len(folder) == len(hf) == 48
    assert folder.labels() == hf.labels() == LABELS
    folder_bytes = sorted(folder.read_bytes(r) for r in folder.records())
    assert sorted(hf.read_bytes(r) for r in hf.records()) == folder_bytes
    by_label = {(r.label, folder.read_bytes(r)) for r in folder.records()}
    assert {(r.label, hf.read_bytes(r)) for r in hf.records()} == by_label


def test_write_bad_images(tmp_path: Path) -> None:
    """The problem files exist with the advertised reasons, the set is small, and the 'ok' ones decode."""
    expected = write_bad_images(tmp_path)
    assert expected == {
        "corrupt.jpg": "corrupt",
        "truncated.jpg": "truncated",
        "empty.jpg": "empty",
        "png_named.jpg": "ok",
        "cmyk.jpg": "ok",
        "gray16.png": "ok",
        "la.png": "ok",
        "palette.gif": "ok",
        "rgba.png": "ok",
        "bomb.png": "too-large",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 1_000_000
    assert (tmp_path / "empty.jpg").stat().st_size == 0

    modes = {}
    for name, reason in expected.items():
        if reason == "ok":
            with Image.open(tmp_path / name) as im:
                im.load()
                modes[name] = (im.format, im.mode)
    assert modes["png_named.jpg"][0] == "PNG"
    assert modes["cmyk.jpg"] == ("JPEG", "CMYK")
    assert modes["gray16.png"][1].startswith("I")
    assert modes["la.png"][1] == "LA" and modes["palette.gif"][1] == "P" and modes["rgba.png"][1] == "RGBA"

    with pytest.raises(OSError, match="truncated"), Image.open(tmp_path / "truncated.jpg") as im:
        im.load()
    with pytest.raises(OSError):
        Image.open(tmp_path / "corrupt.jpg")

    bomb = (tmp_path / "bomb.png").read_bytes()
    width, height = struct.unpack(">II", bomb[16:24])
    assert width * height >= 30000 * 30000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))


def test_write_bad_images_is_deterministic(tmp_path: Path) -> None:
    """Two calls write the same bytes (later tests may compare outputs)."""
    write_bad_images(tmp_path / "a")
    write_bad_images(tmp_path / "b")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()
    }
