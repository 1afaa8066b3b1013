"""The embedding index: atomic shards, resume without duplicates or gaps, invalidation, fast search."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autotune.data import open_source
from autotune.engine import EngineConfig, ScanProgress, run_scan
from autotune.index import EmbeddingIndex, IndexMeta, build_synthetic_index

FAKE = "fake:16"


def _meta(source, dtype: str = "float32", weights: str = "w1") -> IndexMeta:
    return IndexMeta(
        dataset=str(source.path),
        dataset_fingerprint=source.fingerprint(),
        model=FAKE,
        weights_hash=weights,
        preprocess_version="1",
        embed_dim=16,
        dtype=dtype,
        records=len(source),
    )


def test_interrupted_scan_resumes_without_duplicates_or_gaps(small_dataset: Path, tmp_path: Path) -> None:
    source = open_source(small_dataset)
    index = EmbeddingIndex(tmp_path / "idx")
    assert index.prepare(_meta(source)) == ("new", set())

    def stop_after_some(p: ScanProgress) -> None:
        if p.images >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scan(
            source,
            FAKE,
            EngineConfig(cpu_batch=4),
            sink_factory=index.sink(shard_images=4),
            on_batch=stop_after_some,
            fake_delay_s=0.01,
        )
    state, done = index.prepare(_meta(source))
    assert state == "resume" and 0 < len(done) < len(source)
    todo = [r for r in source.records() if r.id not in done]
    run_scan(source, FAKE, EngineConfig(cpu_batch=4), records=todo, sink_factory=index.sink(shard_images=4))
    index.finalize([])
    index.load()
    assert index.ids.tolist() == [r.id for r in source.records()]  # every image once, in id order


def test_sigkilled_scan_resumes(small_dataset: Path, tmp_path: Path) -> None:
    """A scan killed with SIGKILL mid-way leaves only whole shards; the next run completes the index."""
    source = open_source(small_dataset)
    index = EmbeddingIndex(tmp_path / "idx")
    index.prepare(_meta(source))
    script = textwrap.dedent(f"""
        import os, signal
        from autotune.data import open_source
        from autotune.engine import EngineConfig, run_scan
        from autotune.index import EmbeddingIndex
        src = open_source({str(small_dataset)!r})
        idx = EmbeddingIndex({str(tmp_path / "idx")!r})
        def die(p):
            if p.images >= 24:
                os.kill(os.getpid(), signal.SIGKILL)
        if __name__ == "__main__":
            run_scan(src, {FAKE!r}, EngineConfig(cpu_batch=4), sink_factory=idx.sink(shard_images=4),
                     on_batch=die, fake_delay_s=0.01)
    """)
    (tmp_path / "scan.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "scan.py")], timeout=120)
    assert proc.returncode == -9
    state, done = index.prepare(_meta(source))
    assert state == "resume" and len(done) >= 4
    todo = [r for r in source.records() if r.id not in done]
    run_scan(source, FAKE, EngineConfig(cpu_batch=4), records=todo, sink_factory=index.sink(shard_images=4))
    index.finalize([])
    index.load()
    assert index.ids.tolist() == [r.id for r in source.records()]


def test_changed_model_or_dataset_rebuilds(small_dataset: Path, tmp_path: Path) -> None:
    source = open_source(small_dataset)
    index = EmbeddingIndex(tmp_path / "idx")
    index.prepare(_meta(source))
    run_scan(source, FAKE, EngineConfig(cpu_batch=8), sink_factory=index.sink(8))
    index.finalize([])
    assert index.prepare(_meta(source))[0] == "complete"
    state, _ = index.prepare(_meta(source, weights="w2"))
    assert state == "rebuild" and "model weights changed" in index.rebuild_reason
    assert not (index.path / "embeddings.npy").exists()


def test_search_matches_bruteforce(tmp_path: Path) -> None:
    idx = build_synthetic_index(tmp_path / "idx", n=5000, dim=32, dtype="float32")
    idx.load()
    q = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    scores, ids = idx.search(q, 9)
    for row, qi in zip(ids, q, strict=True):
        ref = np.argsort(-(idx.embeddings @ qi))[:9]
        assert row.tolist() == ref.tolist()
    assert np.all(np.diff(scores, axis=1) <= 0)
