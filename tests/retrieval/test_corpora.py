"""Retrieval over WebDataset shards end to end: the files' top-9, and an index that follows its shards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from autotune.data import make_dataset, open_source
from autotune.engine import EngineConfig
from autotune.retrieval import retrieve

QUERY = "a photo of Felis catus"
CFG = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)


def _name(locator: str) -> str:
    """The image's file name, whatever the shape (``Felis catus/0000003.jpg``, ``00000.tar/0000003.jpg@...``)."""
    return locator.split("@")[0].rsplit("/", 1)[-1]


def test_shards_answer_like_files_and_the_index_follows_them(tiny_model: str, tmp_path: Path) -> None:
    """Same top-9 as the files; an added shard is embedded alone, a replaced one re-embeds only its images."""
    files, shards = tmp_path / "files", tmp_path / "shards"
    make_dataset(files, n=24, seed=2)
    make_dataset(shards, n=36, seed=2, format="webdataset", shard_images=12)
    db = tmp_path / "db"
    db.mkdir()
    for name in ("00000.tar", "00001.tar"):  # images 0-23: the files corpus
        os.link(shards / name, db / name)

    scan = retrieve([QUERY], dataset=str(files), model=tiny_model, config=CFG, rescan=True)
    ask = {"model": tiny_model, "config": CFG, "index_dir": tmp_path / "idx", "index_dtype": "float32"}
    built = retrieve([QUERY], dataset=str(db), **ask)
    assert built.mode == "index-new" and built.images == 24 and not built.skipped
    assert [_name(h.locator) for h in built.hits[0]] == [_name(h.locator) for h in scan.hits[0]]
    np.testing.assert_allclose([h.score for h in built.hits[0]], [h.score for h in scan.hits[0]], atol=1e-5)
    assert built.hits[0][0].path.startswith(str(db.resolve() / "0000"))  # <shard>/<member>: where it is

    os.link(shards / "00002.tar", db / "00002.tar")
    added = retrieve([QUERY], dataset=str(db), **ask)
    assert added.mode == "index-updated" and added.images == 12
    assert added.changes == {"new": 12, "changed": 0, "removed": 0, "kept": 24}

    (db / "00000.tar").unlink()
    shutil.copyfile(shards / "00000.tar", db / "00000.tar")  # replaced by a new file of the same bytes
    replaced = retrieve([QUERY], dataset=str(db), **ask)
    assert replaced.changes == {"new": 0, "changed": 12, "removed": 0, "kept": 24}
    assert [h.id for h in replaced.hits[0]] == [h.id for h in added.hits[0]]  # ids kept by locator


def test_bad_shards_are_counted_skips_and_the_scan_goes_on(tiny_model: str, tmp_path: Path) -> None:
    """A corrupt member, a truncated shard and a file that is no tar: skips with their reasons, the rest scanned."""
    shards = tmp_path / "shards"
    make_dataset(shards, n=20, seed=2, format="webdataset", shard_images=10)
    raw = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(raw[: len(raw) // 2])  # cut mid-shard
    (shards / "00002.tar").write_bytes(b"no tar here " * 100)
    first = (shards / "00000.tar").read_bytes()
    member = first.index(b"\xff\xd8")  # the first image's data: overwritten with junk, same length
    (shards / "00000.tar").write_bytes(first[:member] + bytes(range(256)) * 16 + first[member + 4096 :])
    res = retrieve([QUERY], dataset=str(shards), model=tiny_model, config=CFG, rescan=True)
    by_shard = {s["locator"].split("/")[0]: (s["reason"], s["detail"]) for s in res.skipped}
    assert len(res.skipped) == 3 and by_shard["00000.tar"][0] == "corrupt"
    assert by_shard["00001.tar"][0] == "unreadable" and "truncated shard 00001.tar" in by_shard["00001.tar"][1]
    assert by_shard["00002.tar"] == ("unreadable", "00002.tar: not a tar archive (at byte 0); the rest is not read")
    # Every image before the cut is scanned: 9 of the first shard, those of the second listed before the cut
    # member (listed too: its header is whole, its data is not).
    listed = sum(1 for r in open_source(shards).records() if r.locator.startswith("00001.tar/0"))
    assert res.images == 9 + listed - 1 and listed >= 4


class _StopOnceCommitted:
    """A progress task that interrupts the scan (as Ctrl-C would) once the index has a committed shard, at the
    latest when the scan's bar closes (a fast scan may finish before a report reaches it), before the commit."""

    index: Path

    def __init__(self, _desc: str, _total: int) -> None:
        """Nothing to set up."""

    def update(self, completed: int, info: str = "") -> None:
        """Interrupt once a shard of embeddings is committed."""
        if list(self.index.glob("shard-*.npz")):
            raise KeyboardInterrupt

    def advance(self, k: int = 1, info: str = "") -> None:
        """Counted by update."""
        self.update(0)

    def close(self) -> None:
        """The scan is over: interrupt now if it was not yet."""
        self.update(0)


@pytest.mark.slow
def test_an_interrupted_shard_index_resumes(tiny_model: str, tmp_path: Path) -> None:
    """Interrupted after its first committed shard, the next run resumes the same plan and ends like a fresh one."""
    shards = tmp_path / "shards"
    make_dataset(shards, n=24, seed=2, format="webdataset", shard_images=12)
    cfg = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=2)
    _StopOnceCommitted.index = tmp_path / "idx"
    ask = {"model": tiny_model, "config": cfg, "index_dtype": "float32", "shard_images": 2, "top_k": 24}
    try:
        retrieve([QUERY], dataset=str(shards), index_dir=tmp_path / "idx", progress=_StopOnceCommitted, **ask)
    except KeyboardInterrupt:
        pass
    resumed = retrieve([QUERY], dataset=str(shards), index_dir=tmp_path / "idx", **ask)
    assert resumed.mode == "index-resumed" and resumed.images < 24
    fresh = retrieve([QUERY], dataset=str(shards), index_dir=tmp_path / "fresh", **ask)
    assert [(h.locator, round(h.score, 5)) for h in resumed.hits[0]] == [
        (h.locator, round(h.score, 5)) for h in fresh.hits[0]
    ]
