"""WebDataset shards as a source: listing, patterns, sidecars, bad shards as counted skips, pickling."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import pickle
import tarfile
from pathlib import Path

import pytest

from autotune.data import LABELS, WebDatasetSource, make_dataset, open_source
from autotune.data.shards import expand_braces
from autotune.data.tar import list_tar
from autotune.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """34 generated images as 3 shards of 12 (the same bytes as the files corpus of that seed)."""
    out = tmp_path_factory.mktemp("wds") / "shards"
    make_dataset(out, n=34, seed=3, format="webdataset", shard_images=12)
    return out


def _tar(path: Path, members: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    """Write a tar of ``members`` (name -> bytes)."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_brace_expansion() -> None:
    """Zero-padded ranges keep their width; choices and several braces expand as a product."""
    assert expand_braces("d/{00008..00011}.tar") == [f"d/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shards_hold_the_corpus_bytes_and_labels(shards: Path, tmp_path: Path) -> None:
    """A folder of shards, a brace pattern and the files corpus: same images, same labels, captions kept."""
    files = tmp_path / "files"
    make_dataset(files, n=34, seed=3)
    src = open_source(shards)
    assert isinstance(src, WebDatasetSource) and len(src) == 34 and len(src.shards) == 3
    by_name = {p.name: p.read_bytes() for p in files.rglob("*.jpg")}
    for rec in src.records():
        name = rec.locator.split("/", 1)[1].split("@")[0]
        assert src.read_bytes(rec) == by_name[name]
        assert rec.label in LABELS and rec.caption == f"a photo of {rec.label}"
    assert src.labels() == open_source(files).labels()
    pattern = open_source(str(shards / "{00000..00002}.tar"))
    assert [r.locator for r in pattern.records()] == [r.locator for r in src.records()]
    assert "{00000..00002}.tar" in str(pattern.path)  # another range would be another index
    wider = open_source(str(shards / "{00000..00004}.tar"))
    assert len(wider) == 34 and "(3 shards, 2 missing)" in wider.describe()
    single = open_source(shards / "00001.tar")
    assert len(single) == 12 and single.records()[0].locator.startswith("00001.tar/0000012.jpg@")


def test_pickles_small_and_reads_in_a_spawned_worker(shards: Path) -> None:
    """Producers get the source as paths and records as locators: one positioned read, no listing there."""
    src = open_source(shards)
    records = src.records()
    assert len(pickle.dumps(src)) < 1500
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.map(src.read_bytes, records[10:14]) == [src.read_bytes(r) for r in records[10:14]]


def test_identities_follow_the_shard(shards: Path, tmp_path: Path) -> None:
    """A replaced shard changes its members' identities only; the fingerprint follows."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shards.glob("*.tar"):
        os.link(p, copy / p.name)
    before = open_source(copy)
    ids, fp = before.identities(), before.fingerprint()
    data = (copy / "00001.tar").read_bytes()
    (copy / "00001.tar").unlink()
    (copy / "00001.tar").write_bytes(data)  # replaced: same bytes, a new file
    after = open_source(copy)
    pairs = zip(after.records(), ids, after.identities(), strict=True)
    changed = [r.locator.split("/")[0] for r, a, b in pairs if a != b]
    assert set(changed) == {"00001.tar"} and len(changed) == 12
    assert after.fingerprint() != fp


def test_long_names_under_pax_and_gnu(tmp_path: Path) -> None:
    """Member names longer than 100 bytes list and read under both long-name schemes; labels from .json."""
    key = "a" * 120
    members = {f"{key}.png": b"png-bytes", f"{key}.json": b'{"label": 7}', "short.jpg": b"jpg", "short.txt": b" hi "}
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        shard = _tar(tmp_path / f"f{fmt}.tar", members, fmt)
        assert [m.name for m in list_tar(shard).members] == list(members)
        src = WebDatasetSource(shard)
        assert [src.read_bytes(r) for r in src.records()] == [b"png-bytes", b"jpg"]
        assert [(r.label, r.caption) for r in src.records()] == [("7", None), (None, "hi")]


def test_bad_shards_are_counted_records_not_errors(tmp_path: Path) -> None:
    """A cut member, a cut header and a file that is no tar each become a record whose read says why."""
    folder = tmp_path / "bad"
    folder.mkdir()
    good = _tar(folder / "a.tar", {"1.jpg": b"x" * 3000, "2.jpg": b"y" * 3000})
    raw = good.read_bytes()
    (folder / "b.tar").write_bytes(raw[: 512 + 1000])  # cut inside the first member's data
    (folder / "c.tar").write_bytes(raw[: 512 + 3072 + 100])  # cut inside the second header
    (folder / "d.tar").write_bytes(b"this is not a tar archive at all" * 40)
    src = open_source(folder)
    reasons = {}
    for rec in src.records():
        try:
            src.read_bytes(rec)
            reasons[rec.locator.split("@")[0]] = "ok"
        except OSError as exc:
            reasons[rec.locator.split("@")[0]] = str(exc)
    assert reasons["a.tar/1.jpg"] == reasons["a.tar/2.jpg"] == reasons["c.tar/1.jpg"] == "ok"
    assert "truncated shard b.tar" in reasons["b.tar/1.jpg"]
    assert "truncated shard" in reasons["c.tar/!truncated shard"]
    assert "not a tar archive" in reasons["d.tar/!not a tar archive"]
    # Lost parts are tried again by every index update: they never match an identity.
    assert src.identities()[-1] == "unreadable"


@pytest.mark.parametrize(
    ("name", "message"),
    [("x.tar.gz", "compressed"), ("{0..3}.tar", "no .tar shards"), ("only-junk", "no images in the shards")],
    ids=["compressed", "pattern-matches-nothing", "no-image-members"],
)
def test_refusals_are_one_line(tmp_path: Path, name: str, message: str) -> None:
    """Unusable shard paths are a one-line DataError."""
    if name == "x.tar.gz":
        (tmp_path / name).write_bytes(b"gz")
        target = str(tmp_path / "{x.tar.gz,y.tar.gz}")
    elif name == "only-junk":
        _tar(tmp_path / "j.tar", {"k.json": b"{}"})
        target = str(tmp_path / "j.tar")
    else:
        target = str(tmp_path / name)
    with pytest.raises(DataError, match=message) as info:
        open_source(target)
    assert "\n" not in str(info.value)


def test_no_splits_in_shards(shards: Path) -> None:
    """--split names Hugging Face splits: shards refuse it in one line."""
    with pytest.raises(DataError, match="no splits"):
        open_source(shards, split="train")


def test_make_dataset_format_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --format is one line on stderr and exit code 2, before anything is written."""
    from autotune.cli import main

    assert main(["make-dataset", "--out", str(tmp_path / "x"), "--n", "3", "--format", "zip"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown --format 'zip'") and "\n" not in err
    assert not (tmp_path / "x").exists()
