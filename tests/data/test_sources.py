"""Tests of the image sources: folders, Hugging Face datasets, opening errors, fingerprints, pickling."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from autotune.data import (
    LABELS,
    FolderSource,
    HFDatasetSource,
    Record,
    dataset_fingerprint,
    open_source,
)
from autotune.errors import DataError


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the arrow files that `load_dataset` builds out of the user's Hugging Face cache."""
    import datasets

    path = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A hand-made folder: nested and top-level images, hidden entries, a non-image."""
    root = tmp_path / "tree"
    files = {
        "b/2.png": b"png-two",
        "a/1.jpg": b"jpg-one",
        "a/sub/deep.webp": b"deep",
        "top.JPG": b"top",
        "a/notes.txt": b"not an image",
        ".hidden.jpg": b"hidden",
        ".cache/x.jpg": b"hidden dir",
        "a/.DS_Store.png": b"hidden in a",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    """The message of a DataError, checked to be a single line."""
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def _hf_dataset(files: list[Path], *, class_label: bool = False) -> Any:
    """A datasets.Dataset with an Image column built from file paths and a label column."""
    import datasets

    label_feature = datasets.ClassLabel(names=LABELS) if class_label else datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [f.parent.name for f in files]}, features=features
    )


# --------------------------------------------------------------------------------------- folders


def test_folder_order_labels_and_hidden(tree: Path) -> None:
    """Sorted by relative path, ids are positions, labels from the first folder, hidden entries skipped."""
    src = FolderSource(tree)
    assert src.kind == "folder" and src.path == tree.resolve()
    assert src.records() == [
        Record(0, "a/1.jpg", "a"),
        Record(1, "a/sub/deep.webp", "a"),
        Record(2, "b/2.png", "b"),
        Record(3, "top.JPG", None),
    ]
    assert len(src) == 4
    assert src.labels() == ["a", "b"]
    assert src.records() is src.records()  # cached
    assert FolderSource(tree).records() == src.records()  # stable across instances
    assert "4 images" in src.describe() and "\n" not in src.describe()


def test_folder_read_bytes_roundtrip(tree: Path) -> None:
    """read_bytes returns the file's bytes unchanged."""
    src = FolderSource(tree)
    assert [src.read_bytes(r) for r in src.records()] == [b"jpg-one", b"deep", b"png-two", b"top"]


def test_record_is_frozen() -> None:
    """Records are immutable values."""
    record = Record(0, "x.jpg", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.id = 1  # type: ignore[misc]


def test_folder_fingerprint(tree: Path) -> None:
    """16 hex chars; stable; changes when a file is added or modified; a source keeps its snapshot."""
    first = FolderSource(tree)
    fp = first.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert FolderSource(tree).fingerprint() == fp
    assert dataset_fingerprint(tree) == fp

    (tree / "b" / "3.png").write_bytes(b"new")
    added = FolderSource(tree).fingerprint()
    assert added != fp
    assert first.fingerprint() == fp  # the listing and its fingerprint are one snapshot

    target = tree / "a" / "1.jpg"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert FolderSource(tree).fingerprint() not in (fp, added)

    (tree / "notes2.txt").write_text("ignored")
    (tree / ".hidden2.jpg").write_bytes(b"ignored")
    assert FolderSource(tree).fingerprint() == FolderSource(tree).fingerprint()


def test_folder_pickles_small(small_dataset: Path) -> None:
    """The pickle is paths only, and the copy lists and reads the same images."""
    src = open_source(small_dataset)
    records = src.records()
    blob = pickle.dumps(src)
    assert len(blob) < 1000
    copy = pickle.loads(blob)
    assert copy.records() == records
    assert copy.fingerprint() == src.fingerprint()
    assert copy.read_bytes(records[5]) == src.read_bytes(records[5])


def test_sources_work_in_spawned_workers(small_dataset: Path, tmp_path: Path) -> None:
    """A folder source and a save_to_disk dataset source read the same bytes in a spawned process."""
    files = sorted(small_dataset.rglob("*.jpg"))[:6]
    _hf_dataset(files).save_to_disk(str(tmp_path / "disk"))
    folder, hf = open_source(small_dataset), open_source(tmp_path / "disk")
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.map(folder.read_bytes, folder.records()[:3]) == [
            folder.read_bytes(r) for r in folder.records()[:3]
        ]
        assert pool.map(hf.read_bytes, hf.records()) == [f.read_bytes() for f in files]
        assert pool.apply(hf.fingerprint) == hf.fingerprint()


# ------------------------------------------------------------------------------ Hugging Face datasets


def test_save_to_disk_dataset(small_dataset: Path, tmp_path: Path) -> None:
    """A save_to_disk folder opens as an HF source: same count, same bytes, string labels."""
    files = sorted(small_dataset.rglob("*.jpg"))[:20]
    _hf_dataset(files).save_to_disk(str(tmp_path / "disk"))
    src = open_source(tmp_path / "disk")
    assert isinstance(src, HFDatasetSource)
    assert src.kind == "hf" and src.mode == "disk" and src.image_column == "image"
    assert len(src) == 20
    assert src.records()[3] == Record(3, "index:3", files[3].parent.name)
    assert [src.read_bytes(r) for r in src.records()] == [f.read_bytes() for f in files]
    assert src.labels() == sorted({f.parent.name for f in files})
    assert "20 images" in src.describe() and "\n" not in src.describe()
    assert len(pickle.dumps(src)) < 1000


def test_dataset_dict_split_choice(small_dataset: Path, tmp_path: Path) -> None:
    """A DatasetDict contributes 'train' if present, else its first split; class labels map to names."""
    import datasets

    files = sorted(small_dataset.rglob("*.jpg"))
    ds = _hf_dataset(files[:10], class_label=True)
    datasets.DatasetDict({"test": ds.select(range(3)), "train": ds}).save_to_disk(str(tmp_path / "dd"))
    src = open_source(tmp_path / "dd")
    assert isinstance(src, HFDatasetSource) and src.split == "train" and len(src) == 10
    assert [r.label for r in src.records()] == [f.parent.name for f in files[:10]]

    datasets.DatasetDict({"validation": ds.select(range(4)), "test": ds}).save_to_disk(str(tmp_path / "dd2"))
    src2 = open_source(tmp_path / "dd2")
    assert isinstance(src2, HFDatasetSource) and src2.split == "validation" and len(src2) == 4


def test_split_syntax_scans_what_it_says(small_dataset: Path, tmp_path: Path) -> None:
    """`train+validation` scans both splits, locators name their split, bytes come from the right rows."""
    import datasets

    files = sorted(small_dataset.rglob("*.jpg"))[:14]
    train, val = _hf_dataset(files[:10]), _hf_dataset(files[10:])
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(tmp_path / "dd"))
    default = open_source(tmp_path / "dd")
    assert isinstance(default, HFDatasetSource) and len(default) == 10 and default.split_counts() == {"train": 10}
    both = open_source(tmp_path / "dd", split="train+validation")
    assert isinstance(both, HFDatasetSource) and both.split_counts() == {"train": 10, "validation": 4}
    assert [r.locator for r in both.records()][9:11] == ["train:9", "validation:0"]
    assert [both.read_bytes(r) for r in both.records()] == [f.read_bytes() for f in files]
    assert "train (10) + validation (4)" in both.describe()
    assert both.fingerprint() != default.fingerprint()
    tail = open_source(tmp_path / "dd", split="validation[2:]")
    assert [r.locator for r in tail.records()] == ["validation:2", "validation:3"]
    assert [tail.read_bytes(r) for r in tail.records()] == [f.read_bytes() for f in files[12:]]
    with pytest.raises(DataError, match="bad --split 'test'"):
        open_source(tmp_path / "dd", split="test")


def test_identities_follow_content(small_dataset: Path, tmp_path: Path) -> None:
    """Folders identify an image by size and mtime; datasets by a content hash; both change with the bytes."""
    import os
    import shutil

    folder = tmp_path / "f"
    shutil.copytree(small_dataset, folder)
    src = open_source(folder)
    first = src.identities()
    victim = folder / src.records()[0].locator
    victim.write_bytes(victim.read_bytes() + b"\0")
    os.utime(victim, ns=(1, 1))
    again = open_source(folder).identities()
    assert again[0] != first[0] and again[1:] == first[1:]
    files = sorted(small_dataset.rglob("*.jpg"))[:3]
    _hf_dataset(files).save_to_disk(str(tmp_path / "disk"))
    hf = open_source(tmp_path / "disk")
    assert len(set(hf.identities())) == 3 and all(i.startswith("b2:") for i in hf.identities())


def test_parquet_dataset(small_dataset: Path, tmp_path: Path, hf_cache: Path) -> None:
    """Parquet files (paths or embedded bytes) open as an HF source with the same bytes."""
    import datasets

    files = sorted(small_dataset.rglob("*.jpg"))[:12]
    (tmp_path / "pq").mkdir()
    _hf_dataset(files).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    src = open_source(tmp_path / "pq")
    assert isinstance(src, HFDatasetSource) and src.mode == "parquet"
    assert [src.read_bytes(r) for r in src.records()] == [f.read_bytes() for f in files]

    embedded = datasets.Dataset.from_dict(
        {"photo": [{"bytes": f.read_bytes(), "path": f.name} for f in files]},
        features=datasets.Features({"photo": datasets.Image()}),
    )
    (tmp_path / "pq2" / "data").mkdir(parents=True)
    embedded.to_parquet(str(tmp_path / "pq2" / "data" / "train-00000.parquet"))
    src2 = open_source(tmp_path / "pq2")
    assert isinstance(src2, HFDatasetSource) and src2.image_column == "photo"
    assert [src2.read_bytes(r) for r in src2.records()] == [f.read_bytes() for f in files]
    assert src2.labels() == [] and src2.records()[0].label is None
    assert src2.fingerprint() == open_source(tmp_path / "pq2").fingerprint() != src.fingerprint()


def test_imagefolder_dataset(small_dataset: Path, hf_cache: Path) -> None:
    """An image folder opened as an HF imagefolder (image_column given) matches the folder source."""
    folder = open_source(small_dataset)
    assert isinstance(folder, FolderSource)
    hf = open_source(small_dataset, image_column="image")
    assert isinstance(hf, HFDatasetSource) and hf.mode == "imagefolder"
    assert len(hf) == len(folder) == 48
    assert hf.labels() == folder.labels() == LABELS
    assert sorted(hf.read_bytes(r) for r in hf.records()) == sorted(
        folder.read_bytes(r) for r in folder.records()
    )
    assert hf.fingerprint() != folder.fingerprint()


def test_explicit_image_column(small_dataset: Path, tmp_path: Path) -> None:
    """The first Image column is the default; image_column picks another; a bad one is refused."""
    import datasets

    files = sorted(small_dataset.rglob("*.jpg"))[:4]
    ds = datasets.Dataset.from_dict(
        {"thumb": [str(f) for f in reversed(files)], "image": [str(f) for f in files], "name": ["x"] * 4},
        features=datasets.Features(
            {"thumb": datasets.Image(), "image": datasets.Image(), "name": datasets.Value("string")}
        ),
    )
    ds.save_to_disk(str(tmp_path / "two"))
    default = open_source(tmp_path / "two")
    assert isinstance(default, HFDatasetSource) and default.image_column == "thumb"
    assert default.read_bytes(default.records()[0]) == files[-1].read_bytes()
    chosen = open_source(tmp_path / "two", image_column="image")
    assert chosen.read_bytes(chosen.records()[0]) == files[0].read_bytes()
    assert chosen.fingerprint() != default.fingerprint()

    with pytest.raises(DataError) as missing:
        open_source(tmp_path / "two", image_column="nope")
    assert "thumb, image, name" in _one_line_error(missing)
    with pytest.raises(DataError) as not_images:
        open_source(tmp_path / "two", image_column="name")
    assert "does not hold images" in _one_line_error(not_images)


def test_no_image_column(tmp_path: Path) -> None:
    """A dataset without an Image column is refused, naming the columns that exist."""
    import datasets

    datasets.Dataset.from_dict({"a": [1, 2], "b": ["x", "y"]}).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DataError) as excinfo:
        open_source(tmp_path / "plain")
    message = _one_line_error(excinfo)
    assert "no image column" in message and "a, b" in message


def test_hf_fingerprint_changes_with_data(small_dataset: Path, tmp_path: Path) -> None:
    """Reopening gives the same fingerprint; different rows saved in its place give another."""
    files = sorted(small_dataset.rglob("*.jpg"))
    _hf_dataset(files[:5]).save_to_disk(str(tmp_path / "d"))
    fp = dataset_fingerprint(tmp_path / "d")
    assert len(fp) == 16 and open_source(tmp_path / "d").fingerprint() == fp
    _hf_dataset(files[5:10]).save_to_disk(str(tmp_path / "d2"))
    assert dataset_fingerprint(tmp_path / "d2") != fp


# ------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist is a one-line DataError naming it."""
    with pytest.raises(DataError) as excinfo:
        open_source(tmp_path / "nowhere")
    assert "nowhere" in _one_line_error(excinfo)


def test_empty_folder(tmp_path: Path) -> None:
    """A folder without images (empty, or non-images and hidden files only) is a one-line DataError."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        open_source(tmp_path / "empty")
    assert "no images" in _one_line_error(excinfo)
    (tmp_path / "junk" / "sub").mkdir(parents=True)
    (tmp_path / "junk" / "readme.txt").write_text("x")
    (tmp_path / "junk" / ".hidden.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as excinfo:
        open_source(tmp_path / "junk")
    assert "no images" in _one_line_error(excinfo)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    """A plain file is refused with one line."""
    (tmp_path / "one.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as excinfo:
        open_source(tmp_path / "one.jpg")
    _one_line_error(excinfo)


def test_unknown_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner/name that is neither local nor cached fails in one line (offline: no network)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as excinfo:
        open_source("no-such-owner/no-such-dataset")
    assert "no-such-owner/no-such-dataset" in _one_line_error(excinfo)


def test_unreadable_dataset(tmp_path: Path) -> None:
    """A damaged save_to_disk folder is a one-line DataError saying why."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{not json")
    with pytest.raises(DataError) as excinfo:
        open_source(broken)
    assert "cannot read dataset" in _one_line_error(excinfo)


def test_content_fingerprint_agrees_across_copies_not_mtimes(tree: Path, tmp_path: Path) -> None:
    """Copies of the same images elsewhere, written at other times, agree; a changed byte does not."""
    import shutil

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, copy)  # another path, and (copytree keeps mtimes) new ones below
    for path in copy.rglob("*"):
        os.utime(path, ns=(1, 1))
    original, copied = FolderSource(tree), FolderSource(copy)
    assert original.fingerprint() != copied.fingerprint()  # the listing's fingerprint follows mtimes
    assert original.content_fingerprint() == copied.content_fingerprint()
    assert len(original.content_fingerprint()) == 16

    renamed = shutil.copytree(tree, tmp_path / "renamed")
    (renamed / "a" / "1.jpg").rename(renamed / "a" / "9.jpg")  # the same bytes under another name
    assert FolderSource(renamed).content_fingerprint() != original.content_fingerprint()
    victim = copy / "a" / "1.jpg"
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert FolderSource(copy).content_fingerprint() != original.content_fingerprint()
