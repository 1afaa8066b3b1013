"""The embedding index: safe folders, stable ids, updates equal to fresh builds, one writer, resume, search."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autotune.bench.index import build_synthetic_index
from autotune.cli import main
from autotune.data import write_bad_images
from autotune.engine import EngineConfig
from autotune.engine.transport import segment_names
from autotune.index import (
    MARKER,
    EmbeddingIndex,
    IndexBookkeepingError,
    IndexBusyError,
    default_index_dir,
    list_indexes,
    remove_index,
)
from autotune.retrieval import NoReadableImages, retrieve

QUERY = "a photo of Felis catus"
CFG = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=4)


def _copy(small_dataset: Path, dest: Path, n: int) -> Path:
    """The first ``n`` images of the corpus, same labels, in a fresh folder."""
    for src in sorted(small_dataset.rglob("*.jpg"))[:n]:
        out = dest / src.relative_to(small_dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return dest


def _by_locator(res) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(h.locator, round(h.score, 3)) for h in res.hits[0]]


def _ask(dataset: Path, model: str, index_dir: Path, **kw):  # type: ignore[no-untyped-def]
    return retrieve([QUERY], dataset=str(dataset), model=model, config=kw.pop("config", CFG), index_dir=index_dir, **kw)


# ------------------------------------------------------------------------------------------- safe folders


def test_foreign_folder_is_refused_and_its_files_survive(small_dataset: Path, tmp_path: Path, capsys) -> None:
    """--index-dir on a folder the tool did not make: one line, exit 2, nothing touched."""
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    args = ["retrieve", QUERY, "--dataset", str(small_dataset), "--model", "synthetic:tiny", "--profile", "none",
            "--index-dir", str(folder), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an index made by clip-autotune" in err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "years of work"
    with pytest.raises(Exception, match="not an index"):
        remove_index(str(folder))
    assert (folder / "thesis.txt").exists()


def test_index_list_and_rm_touch_only_their_own_files(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    """`index rm` deletes what the tool wrote; a file someone put inside stays, with its folder."""
    root = tmp_path / "indexes"
    idx = root / "mine"
    _ask(_copy(small_dataset, tmp_path / "db", 8), tiny_model, idx)
    (idx / "notes.txt").write_text("mine, not the tool's")
    [row] = list_indexes(root)
    assert row.name == "mine" and row.embedded == 8 and row.complete and row.recipe == "cpu:eager"
    out = remove_index("mine", root)
    assert out["left_foreign_files"] == ["notes.txt"] and out["freed_bytes"] > 0
    assert sorted(p.name for p in idx.iterdir()) == ["notes.txt"]
    assert list_indexes(root) == []


# -------------------------------------------------------------------------------------------- bad databases


def test_database_with_no_readable_image_is_one_line(tmp_path: Path, capsys) -> None:
    """All files broken: exit 2, one line that says so, and the reasons in skipped.csv."""
    folder = tmp_path / "broken"
    folder.mkdir()
    expected = {k: v for k, v in write_bad_images(folder).items() if v != "ok"}
    for name in [k for k in write_bad_images(folder) if expected.get(k) is None]:
        (folder / name).unlink()  # keep only the broken ones
    args = ["retrieve", QUERY, "--dataset", str(folder), "--model", "synthetic:tiny", "--profile", "none",
            "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    for _ in range(2):  # the second run answers from the (empty) index: the same line
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no image could be read" in err[0] and "skipped.csv" in err[0]
    rows = (tmp_path / "out" / "skipped.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(expected)
    with pytest.raises(NoReadableImages):
        retrieve([QUERY], dataset=str(folder), model="synthetic:tiny", config=CFG, rescan=True)


# ------------------------------------------------------------------------------------------- stale indexes


@pytest.mark.slow
def test_backend_change_rebuilds_and_default_folders_differ(
    small_dataset: Path, tiny_model: str, tmp_path: Path
) -> None:
    """An index built with one backend is never served for another."""
    db = _copy(small_dataset, tmp_path / "db", 8)
    _ask(db, tiny_model, tmp_path / "idx")
    int8 = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=4, cpu_backend="int8")
    res = _ask(db, tiny_model, tmp_path / "idx", config=int8)
    assert res.mode == "index-new" and res.images == 8
    assert any("backend changed (cpu:eager -> cpu:int8)" in n for n in res.notes)
    assert default_index_dir(str(db), tiny_model, "cpu:eager") != default_index_dir(str(db), tiny_model, "cpu:int8")


# --------------------------------------------------------------------------------------- updates, stable ids


def test_update_gives_the_same_topk_as_a_fresh_build(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    """Added, changed and removed images: only they are scanned, ids stay, top-k equals a fresh build."""
    db = _copy(small_dataset, tmp_path / "db", 30)
    first = _ask(db, tiny_model, tmp_path / "idx", top_k=30)
    ids_before = {h.locator: h.id for h in first.hits[0]}
    files = sorted(db.rglob("*.jpg"))
    removed = files[:3]
    for f in removed:
        f.unlink()
    changed = files[3:5]
    for f in changed:
        f.write_bytes(files[-1].read_bytes())  # new content under the same name
    extra = sorted(small_dataset.rglob("*.jpg"))[30:34]
    for src in extra:
        dest = db / src.relative_to(small_dataset)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    updated = _ask(db, tiny_model, tmp_path / "idx", top_k=30)
    assert updated.mode == "index-updated" and updated.images == 6
    assert updated.changes == {"new": 4, "changed": 2, "removed": 3, "kept": 25}
    assert "index updated: 4 new, 2 changed, 3 removed, 25 kept" in updated.notes
    fresh = _ask(db, tiny_model, tmp_path / "fresh", top_k=30)
    assert _by_locator(updated) == _by_locator(fresh)
    for h in updated.hits[0]:
        if h.locator in ids_before:
            assert h.id == ids_before[h.locator]  # kept and changed images keep their ids
    assert all(Path(f).name not in {h.locator.split("/")[-1] for h in updated.hits[0]} for f in removed)
    again = _ask(db, tiny_model, tmp_path / "idx")
    assert again.mode == "index" and again.images == 0


def test_killed_update_resumes_to_the_same_index(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    """SIGKILL during a build: committed shards are kept, the next run finishes with no duplicates."""
    db = _copy(small_dataset, tmp_path / "db", 24)
    idx = tmp_path / "idx"
    # The build SIGKILLs itself once a shard is committed, as the kernel's OOM killer would: its workers die with
    # it (parent-death signal), and multiprocessing's resource tracker, still alive, unlinks the build's
    # semaphores. The tiny model embeds a batch in ~5 ms, faster than the build's progress reports reach it on a
    # loaded machine (all 24 images were committed before a kill at "20 done"), so the build first stops
    # (SIGSTOP) every process it started, freezing the scan where it is, and the test resumes them (SIGCONT)
    # once the build is dead: they see their parent gone and exit without embedding anything more.
    stopped = tmp_path / "stopped-pids"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import psutil
        from autotune.engine import EngineConfig
        from autotune.retrieval import retrieve

        class DieMidway:
            def __init__(self, desc, total):
                self.total = total
            def update(self, completed, info=""):
                if list(Path({str(idx)!r}).glob("shard-*.npz")):
                    kids = psutil.Process().children(recursive=True)
                    for kid in kids:
                        kid.suspend()
                    Path({str(stopped)!r}).write_text(" ".join(str(k.pid) for k in kids))
                    os.kill(os.getpid(), signal.SIGKILL)
            def advance(self, k=1, info=""):
                pass
            def close(self):
                pass

        if __name__ == "__main__":
            retrieve([{QUERY!r}], dataset={str(db)!r}, model={tiny_model!r}, index_dir=Path({str(idx)!r}),
                     config=EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=2), shard_images=2,
                     progress=DieMidway)
    """)  # fmt: skip
    (tmp_path / "build.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "build.py")], start_new_session=True)
    proc.wait(120)
    for pid in stopped.read_text().split() if stopped.is_file() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGCONT)
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    resumed = _ask(db, tiny_model, idx, top_k=24)
    assert resumed.mode == "index-resumed" and 0 < resumed.images < 24
    fresh = _ask(db, tiny_model, tmp_path / "fresh", top_k=24)
    assert _by_locator(resumed) == _by_locator(fresh)
    index = EmbeddingIndex(idx)
    index.load()
    assert index.ids is not None and sorted(index.ids.tolist()) == list(range(24))
    assert segment_names(proc.pid) == []  # the killed run's shared memory was swept by the next scan


def test_second_writer_is_refused_naming_the_holder(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    """While one process writes an index, another refuses at once; a complete index reads without a lock."""
    db = _copy(small_dataset, tmp_path / "db", 8)
    idx = tmp_path / "idx"
    _ask(db, tiny_model, idx)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from autotune.index import EmbeddingIndex
            with EmbeddingIndex(__import__("pathlib").Path({str(idx)!r})).writer():
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert _ask(db, tiny_model, idx).mode == "index"  # reading needs no lock
        shutil.copy2(sorted(small_dataset.rglob("*.jpg"))[20], db / "extra.jpg")
        with pytest.raises(IndexBusyError, match=f"process {holder.pid} "):
            _ask(db, tiny_model, idx)
    finally:
        holder.kill()
        holder.wait()
    res = _ask(db, tiny_model, idx)
    assert res.mode == "index-updated" and res.changes["new"] == 1
    index = EmbeddingIndex(idx)
    index.load()
    assert index.ids is not None and len(np.unique(index.ids)) == len(index.ids) == 9


def test_commit_refuses_duplicate_embeddings(small_dataset: Path, tmp_path: Path) -> None:
    """Shards that embed an image twice are a bookkeeping error, and nothing is committed."""
    from autotune.data import open_source
    from autotune.index import IndexKey, IndexMeta, commit_update, plan_update

    source = open_source(_copy(small_dataset, tmp_path / "db", 4))
    index = EmbeddingIndex(tmp_path / "idx")
    index.claim()
    meta = IndexMeta(key=IndexKey("fake:4", "w", "cpu:eager", "p", 4, "float32"), dataset="db")
    plan = plan_update(index, meta, source.records(), source.identities(), source.fingerprint())
    sink = index.sink("float32", shard_images=100)(0)
    ids = np.array([r.id for r in plan.todo] + [plan.todo[0].id])
    sink.write(ids, np.ones((len(ids), 4), np.float32))
    sink.close()
    with pytest.raises(IndexBookkeepingError, match="twice"):
        commit_update(index, meta, plan, [])
    assert index.read_meta() is not None and not index.read_meta().complete  # type: ignore[union-attr]


@pytest.mark.slow
def test_split_option_scans_both_splits(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    """A DatasetDict with train and validation: --split says what is scanned, and the result says so too."""
    import datasets

    files = sorted(small_dataset.rglob("*.jpg"))[:12]
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files]}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds.select(range(9)), "validation": ds.select(range(9, 12))}).save_to_disk(
        str(tmp_path / "dd")
    )
    default = _ask(tmp_path / "dd", tiny_model, tmp_path / "i1", top_k=12)
    assert default.images == 9 and default.splits == {"train": 9}
    both = _ask(tmp_path / "dd", tiny_model, tmp_path / "i2", top_k=12, split="train+validation")
    assert both.images == 12 and both.splits == {"train": 9, "validation": 3}
    assert {h.locator.split(":")[0] for h in both.hits[0]} == {"train", "validation"}


# ------------------------------------------------------------------------------------------------ search


def test_search_matches_bruteforce(tmp_path: Path) -> None:
    idx = build_synthetic_index(tmp_path / "idx", n=5000, dim=32, dtype="float32")
    assert (tmp_path / "idx" / MARKER).is_file()
    idx.load()
    q = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    scores, ids = idx.search(q, 9)
    for row, qi in zip(ids, q, strict=True):
        ref = np.argsort(-(idx.embeddings @ qi))[:9]
        assert row.tolist() == ref.tolist()
    assert np.all(np.diff(scores, axis=1) <= 0)
