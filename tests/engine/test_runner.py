"""The scan engine end to end on the fake backend: exactness, scheduling, skips, faults, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from autotune.data import open_source
from autotune.engine import EngineConfig, ScanAborted, ScanProgress, embed_queries, run_scan
from autotune.engine.sink import ShardSinkFactory, read_shards
from autotune.models.backends import FakeBackend
from autotune.preprocess import PreprocessSpec, fast_preprocess

FAKE = "fake:32"
QUERIES = ["a photo of Felis catus", "a photo of Coffea arabica"]


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").exists() else set()


def _worker_children() -> list[psutil.Process]:
    kids = psutil.Process().children(recursive=True)
    return [k for k in kids if "resource_tracker" not in " ".join(k.cmdline())]


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
    before = _shm_segments()
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
    assert not _worker_children()
    assert _shm_segments() <= before


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
    before = _shm_segments()
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
    assert not _worker_children()
    assert _shm_segments() <= before


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
    assert not _worker_children()


def test_interrupt_shuts_down_cleanly(source) -> None:
    before = _shm_segments()

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
    assert not _worker_children()
    assert _shm_segments() <= before
