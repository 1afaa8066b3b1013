"""The scan engine end to end on the fake backend: exactness, scheduling, skips, faults, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from processes import leftover_processes

from autotune.atomic import TMP_MARK, DiskFullError, temporary_name
from autotune.data import open_source
from autotune.engine import EngineConfig, ScanAborted, ScanMismatch, ScanProgress, embed_queries, run_scan
from autotune.engine.sink import ShardSinkFactory, read_shards
from autotune.engine.telemetry import time_per_image
from autotune.engine.transport import segment_names
from autotune.models.backends import FakeBackend
from autotune.preprocess import PreprocessSpec, fast_preprocess
from autotune.progress import Task

FAKE = "fake:32"
QUERIES = ["a photo of Felis catus", "a photo of Coffea arabica"]


def _shm_segments() -> list[str]:
    """This process's shared-memory segments: other processes on the machine may be scanning meanwhile."""
    return segment_names(os.getpid())


def _brute_force(source, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Top-k from embedding every image in one process with the same preprocessing and backend."""
    backend = FakeBackend(32)
    spec = PreprocessSpec()
    ids, pix = [], []
    for rec in source.records():
        try:
            pix.append(fast_preprocess(source.read_bytes(rec), spec))
            ids.append(rec.id)
        except Exception:
            continue
    emb = backend.embed(np.stack(pix))
    scores = embed_queries(FAKE, QUERIES) @ emb.T
    order = [np.lexsort((np.array(ids), -row))[:k] for row in scores]
    return np.stack([row[o] for row, o in zip(scores, order, strict=True)]), np.stack([np.array(ids)[o] for o in order])


@pytest.fixture(scope="module")
def source(small_dataset: Path):
    return open_source(small_dataset)


@pytest.mark.parametrize(
    "cfg",
    [
        EngineConfig(producers=1, cpu_models=1, cpu_batch=8),
        EngineConfig(producers=2, cpu_models=2, cpu_batch=5, scheduling="dynamic"),
        EngineConfig(producers=2, cpu_models=2, cpu_batch=4, scheduling="static", probe_batches=1),
    ],
    ids=["1p-1c", "2p-2c-dynamic", "2p-2c-static"],
)
def test_scan_is_exact_and_covers_every_record_once(source, cfg: EngineConfig, tmp_path: Path) -> None:
    res = run_scan(
        source,
        FAKE,
        cfg,
        queries=embed_queries(FAKE, QUERIES),
        top_k=9,
        sink_factory=ShardSinkFactory(str(tmp_path / "sink"), shard_images=7, dtype="float32"),
    )
    ref_scores, ref_ids = _brute_force(source)
    assert res.topk_ids.tolist() == ref_ids.tolist()
    np.testing.assert_allclose(res.topk_scores, ref_scores, atol=1e-4)
    ids, emb = read_shards(tmp_path / "sink")
    assert sorted(ids.tolist()) == [r.id for r in source.records()]  # each record exactly once
    assert res.images == len(source) and not res.skipped
    assert emb.shape == (len(source), 32)
    assert res.steady_images_per_s > 0 and res.bottleneck
    roles = sorted(w["role"] for w in res.workers)
    assert roles.count("consumer") == cfg.cpu_models and roles.count("producer") == cfg.producers
    # Where the time went: every image was preprocessed and embedded, so both stages took time; the producers'
    # share of the machine's core-seconds is a share.
    per = time_per_image(res.workers, res.images, res.scan_seconds, cores=2)
    assert per["preprocess_ms"] > 0 and per["forward_ms"] > 0 and 0 < per["preprocess_core_share"] <= 1
    assert set(per) == {"preprocess_ms", "preprocess_core_share", "forward_ms", "transfer_ms", "score_ms", "wait_ms"}
    assert not leftover_processes()
    assert not _shm_segments()


class RecordingTask:
    """A progress task that remembers every update (the library reports; it never draws)."""

    def __init__(self, description: str, total: int) -> None:
        """A fresh task."""
        self.description, self.total = description, total
        self.updates: list[tuple[int, str]] = []
        self.closed = False

    def advance(self, k: int = 1, info: str = "") -> None:
        """Not used by the scan."""
        raise AssertionError("the scan sets its count, it does not advance it")

    def update(self, completed: int, info: str = "") -> None:
        """Remember the count and the rate."""
        self.updates.append((completed, info))

    def close(self) -> None:
        """Remember that the task ended."""
        self.closed = True


def test_progress_goes_to_the_factory_and_nothing_is_printed(source, capsys: pytest.CaptureFixture[str]) -> None:
    tasks: list[RecordingTask] = []

    def factory(description: str, total: int) -> Task:
        tasks.append(RecordingTask(description, total))
        return tasks[-1]

    res = run_scan(source, FAKE, EngineConfig(producers=1, cpu_batch=8), progress=factory)
    assert [(t.description, t.total) for t in tasks] == [("scan", len(source))]
    task = tasks[0]
    counts = [c for c, _info in task.updates]
    assert counts == sorted(counts) and counts[-1] == res.images + len(res.skipped) == len(source)
    assert task.updates[-1][1].endswith("img/s")
    assert task.closed
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_passive_openmp_wait_reaches_the_replica_before_its_runtime_loads(source) -> None:
    """omp_wait=passive sets OMP_WAIT_POLICY in the replica's own process, before torch (libgomp) reads it; the
    default leaves the environment as it was."""
    stats = {}
    for wait in ("passive", "default"):
        res = run_scan(source, FAKE, EngineConfig(producers=1, cpu_batch=8, omp_wait=wait))
        (consumer,) = [w for w in res.workers if w["role"] == "consumer"]
        stats[wait] = consumer["stats"]
    assert stats["passive"]["omp_wait_policy"] == "PASSIVE"
    assert stats["default"]["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")


def test_static_schedule_gives_the_faster_replica_more_work(source) -> None:
    # Two replicas on one core each is not "fast vs slow"; a delay per image makes speed differences
    # deterministic enough: both replicas get the same delay, so the split must be roughly even.
    cfg = EngineConfig(producers=1, cpu_models=2, cpu_batch=4, scheduling="static", probe_batches=1)
    res = run_scan(source, FAKE, cfg, queries=embed_queries(FAKE, QUERIES), fake_delay_s=0.005)
    per = {w["index"]: w["stats"]["counts"].get("images", 0) for w in res.workers if w["role"] == "consumer"}
    assert sum(per.values()) == len(source)
    assert min(per.values()) >= 8


def test_corrupt_images_are_skipped_and_reported(tmp_path: Path, small_dataset: Path) -> None:
    from autotune.data import write_bad_images

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, src in enumerate(sorted(small_dataset.rglob("*.jpg"))[:6]):
        (folder / f"good{i}.jpg").write_bytes(src.read_bytes())
    expected = write_bad_images(folder)
    src = open_source(folder)
    res = run_scan(src, FAKE, EngineConfig(producers=2, cpu_batch=3), queries=embed_queries(FAKE, QUERIES))
    bad = {name for name, why in expected.items() if why != "ok"}
    by_locator = {Path(s["locator"]).name: s["reason"] for s in res.skipped}
    assert set(by_locator) == bad
    for name in bad:
        assert by_locator[name] == expected[name]
    assert res.images + len(res.skipped) == len(src)


def test_killed_consumer_ends_scan_promptly_and_cleanly(source) -> None:
    killed: dict[str, float] = {}

    def kill_one(p: ScanProgress) -> None:
        if killed:
            return
        for child in mp.active_children():
            if child.name.startswith("consumer-0"):
                os.kill(child.pid, signal.SIGKILL)
                killed["at"] = time.monotonic()

    with pytest.raises(ScanAborted, match="consumer 0 .*SIGKILL"):
        run_scan(
            source,
            FAKE,
            EngineConfig(producers=1, cpu_models=2, cpu_batch=2),
            queries=embed_queries(FAKE, QUERIES),
            fake_delay_s=0.05,
            on_batch=kill_one,
        )
    assert time.monotonic() - killed["at"] < 5.0
    assert not leftover_processes()
    assert not _shm_segments()


def test_killed_producer_is_named(source) -> None:
    killed: list[int] = []

    def kill_producer(p: ScanProgress) -> None:
        for child in mp.active_children():
            if child.name.startswith("producer-") and not killed:
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    with pytest.raises(ScanAborted, match="producer 0 .*SIGKILL"):
        run_scan(
            source,
            FAKE,
            EngineConfig(producers=1, cpu_batch=2),
            queries=embed_queries(FAKE, QUERIES),
            fake_delay_s=0.05,
            on_batch=kill_producer,
        )
    assert not leftover_processes()


def test_interrupt_shuts_down_cleanly(source) -> None:

    def interrupt(p: ScanProgress) -> None:
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_scan(
            source,
            FAKE,
            EngineConfig(producers=2, cpu_models=1, cpu_batch=2),
            queries=embed_queries(FAKE, QUERIES),
            fake_delay_s=0.05,
            on_batch=interrupt,
        )
    assert time.monotonic() - t0 < 30
    assert not leftover_processes()
    assert not _shm_segments()


class FailingSinkFactory:
    """A sink factory whose sink cannot open: its error message spans two lines (picklable by reference)."""

    def __call__(self, consumer: int) -> NoReturn:
        """Fail the way some libraries do, with the useful part on the first line."""
        raise ValueError("the sink cannot open\nsee the documentation for details")


def test_duplicate_record_ids_fail_the_bookkeeping(source, tmp_path: Path) -> None:
    recs = source.records()[:8]
    with pytest.raises(ScanMismatch) as info:
        run_scan(
            source,
            FAKE,
            EngineConfig(producers=1, cpu_batch=4),
            records=[*recs, recs[3]],
            sink_factory=ShardSinkFactory(str(tmp_path / "sink"), shard_images=4),
        )
    msg = str(info.value)
    assert "\n" not in msg and "/s" not in msg
    assert msg == (
        f"scan bookkeeping mismatch: record id {recs[3].id} was embedded 2 times (1 ids more than once); "
        "record ids must be unique"
    )
    assert not leftover_processes()
    assert not _shm_segments()


def test_a_worker_error_is_one_line_naming_its_first_line(source) -> None:
    with pytest.raises(ScanAborted) as info:
        run_scan(source, FAKE, EngineConfig(producers=1, cpu_batch=4), sink_factory=FailingSinkFactory())
    assert str(info.value) == "consumer 0 failed: ValueError: the sink cannot open"
    assert not leftover_processes()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KiB tmpfs: a real full disk (needs root and mount rights; skipped otherwise)."""
    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny tmpfs needs root and the mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # busy: detach it anyway


def test_a_full_disk_ends_the_scan_with_one_line_and_keeps_committed_shards(source, tiny_disk: Path) -> None:
    sink = tiny_disk / "sink"
    sink.mkdir()
    leftover = temporary_name(sink / "shard-c9-1-000000.npz")  # as a writer killed mid-commit leaves it
    leftover.write_bytes(b"partial")
    seen: dict[str, float] = {}

    def note(p: ScanProgress) -> None:
        seen["last"] = time.monotonic()

    # 16 KiB per image (fake:4096, float32): 4-image shards fill 256 KiB after a few commits, while a whole
    # scan of 48 images at 0.05 s each would run on for seconds after that.
    with pytest.raises(DiskFullError) as info:
        run_scan(
            source,
            "fake:4096",
            EngineConfig(producers=1, cpu_batch=4),
            sink_factory=ShardSinkFactory(str(sink), shard_images=4, dtype="float32"),
            fake_delay_s=0.05,
            on_batch=note,
        )
    ended = time.monotonic()
    msg = str(info.value)
    assert msg.startswith("no space left on the device while writing ") and "\n" not in msg
    assert ended - seen["last"] < 5.0  # promptly: the failing batch, then shutdown
    ids, emb = read_shards(sink)
    assert len(ids) >= 4 and len(ids) % 4 == 0 and emb.shape == (len(ids), 4096)  # whole shards only
    assert len(set(ids.tolist())) == len(ids)
    assert not [p.name for p in sink.iterdir() if TMP_MARK in p.name or not p.name.endswith(".npz")]
    assert not leftover_processes()
    assert not _shm_segments()
