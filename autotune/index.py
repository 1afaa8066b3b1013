"""The embedding index: shards committed atomically during a scan, then queries in milliseconds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.engine.sink import ShardSinkFactory, read_shards
from autotune.errors import AutotuneError

INDEX_FORMAT = 1
SHARD_PREFIX = "shard"


@dataclass
class IndexMeta:
    """What an index was built from; any difference from the current dataset or model invalidates it."""

    dataset: str
    dataset_fingerprint: str
    model: str
    weights_hash: str
    preprocess_version: str
    embed_dim: int
    dtype: str
    records: int
    complete: bool = False
    format: int = INDEX_FORMAT
    skipped: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def key(self) -> tuple[Any, ...]:
        """The fields that must match for the index to answer for this dataset and model."""
        return (
            self.format,
            self.dataset_fingerprint,
            self.weights_hash,
            self.preprocess_version,
            self.embed_dim,
            self.dtype,
        )

    def describe_difference(self, other: IndexMeta) -> str:
        """Which of dataset / model / preprocessing / settings changed, in words."""
        parts = []
        if self.dataset_fingerprint != other.dataset_fingerprint:
            parts.append("the dataset changed")
        if self.weights_hash != other.weights_hash:
            parts.append("the model weights changed")
        if self.preprocess_version != other.preprocess_version:
            parts.append("the preprocessing changed")
        if (self.embed_dim, self.dtype, self.format) != (other.embed_dim, other.dtype, other.format):
            parts.append("the index settings changed")
        return ", ".join(parts) or "nothing"


def default_index_dir(dataset: str, model: str) -> Path:
    """A stable folder per (dataset path, model id) under the cache."""
    from autotune.cache import cache_dir

    slug = re.sub(r"[^a-zA-Z0-9]+", "-", f"{Path(dataset).name}-{model}").strip("-")[:60]
    digest = hashlib.sha256(f"{Path(dataset).resolve()}|{model}".encode()).hexdigest()[:10]
    return cache_dir("indexes") / f"{slug}-{digest}"


class EmbeddingIndex:
    """A folder of committed embedding shards plus ``meta.json``; consolidated into two arrays when complete.

    Example:
        >>> idx = EmbeddingIndex(path)
        >>> idx.load()
        >>> idx.search(text_embeddings, k=9)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.ids: np.ndarray | None = None
        self.embeddings: np.ndarray | None = None

    @property
    def meta_path(self) -> Path:
        """Where the metadata lives."""
        return self.path / "meta.json"

    def read_meta(self) -> IndexMeta | None:
        """The stored metadata, or None for a missing or unreadable index."""
        try:
            return IndexMeta(**json.loads(self.meta_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write_meta(self, meta: IndexMeta) -> None:
        """Replace the metadata atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(meta), indent=2))
        os.replace(tmp, self.meta_path)

    def prepare(self, meta: IndexMeta) -> tuple[str, set[int]]:
        """Open for (re)building: returns (state, ids already embedded); state is new|resume|rebuild|complete.

        A stored index built from another dataset, model or preprocessing is wiped and rebuilt.
        """
        old = self.read_meta()
        if old is not None and old.key() != meta.key():
            why = old.describe_difference(meta)
            shutil.rmtree(self.path)
            self.write_meta(meta)
            self.rebuild_reason = why
            return "rebuild", set()
        if old is not None and old.complete:
            return "complete", set()
        if old is None:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.write_meta(meta)
            return "new", set()
        for tmp in self.path.glob("*.tmp"):  # a shard cut off mid-write is not committed: drop it
            tmp.unlink()
        ids, _ = read_shards(self.path, SHARD_PREFIX)
        return "resume", set(ids.tolist())

    def sink(self, shard_images: int = 1024) -> ShardSinkFactory:
        """Factory the engine's replicas use to stream embeddings into this index."""
        meta = self.read_meta()
        dtype = meta.dtype if meta else "float16"
        return ShardSinkFactory(str(self.path), shard_images=shard_images, dtype=dtype, prefix=SHARD_PREFIX)

    def finalize(self, skipped: list[dict[str, Any]]) -> IndexMeta:
        """Consolidate shards into ids.npy / embeddings.npy (sorted by id) and mark the index complete."""
        meta = self.read_meta()
        if meta is None:
            raise AutotuneError(f"index {self.path} has no metadata")
        ids, embs = read_shards(self.path, SHARD_PREFIX)
        if len(np.unique(ids)) != len(ids):
            raise AutotuneError(f"index {self.path} holds duplicate ids: rebuild it with --rescan")
        order = np.argsort(ids, kind="stable")
        ids, embs = ids[order], embs[order].astype(meta.dtype)
        for name, arr in (("ids", ids), ("embeddings", embs)):
            tmp = self.path / f"{name}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, self.path / f"{name}.npy")
        meta.complete = True
        meta.skipped = skipped
        self.write_meta(meta)
        for shard in self.path.glob(f"{SHARD_PREFIX}-*.npz"):
            shard.unlink()
        return meta

    def load(self) -> None:
        """Load the consolidated arrays; embeddings become float32 once, for fast BLAS products."""
        if not (self.path / "embeddings.npy").is_file():
            raise AutotuneError(f"index {self.path} is not complete: run a retrieval to finish it")
        self.ids = np.load(self.path / "ids.npy")
        self.embeddings = np.load(self.path / "embeddings.npy").astype(np.float32)

    def search(self, queries: np.ndarray, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query: one matrix product and a partial sort."""
        if self.embeddings is None or self.ids is None:
            self.load()
        assert self.embeddings is not None and self.ids is not None
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores = q @ self.embeddings.T
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out_s, out_i = [], []
        for row, cand in zip(scores, part, strict=True):
            cs, ci = row[cand], self.ids[cand]
            order = np.lexsort((ci, -cs))
            out_s.append(cs[order])
            out_i.append(ci[order])
        return np.stack(out_s), np.stack(out_i)

    def __len__(self) -> int:
        """Images in the loaded index."""
        return 0 if self.ids is None else len(self.ids)


def build_synthetic_index(path: Path, n: int, dim: int, seed: int = 0, dtype: str = "float16") -> EmbeddingIndex:
    """A complete index of ``n`` random unit vectors (for query benchmarks without a scan)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        chunks.append(block.astype(dtype))
    np.save(path / "ids.npy", np.arange(n, dtype=np.int64))
    np.save(path / "embeddings.npy", np.concatenate(chunks))
    idx = EmbeddingIndex(path)
    idx.write_meta(
        IndexMeta(
            dataset="synthetic",
            dataset_fingerprint="synthetic",
            model="synthetic",
            weights_hash="synthetic",
            preprocess_version="-",
            embed_dim=dim,
            dtype=dtype,
            records=n,
            complete=True,
        )
    )
    return idx


def bench_index(
    n: int = 500_000, dim: int = 512, queries: int = 20, k: int = 9, dtype: str = "float16", seed: int = 0
) -> dict[str, Any]:
    """Query latency on a generated ``n`` x ``dim`` index: load time, then per-query milliseconds."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="autotune-index-") as tmp:
        t0 = time.perf_counter()
        idx = build_synthetic_index(Path(tmp) / "index", n, dim, seed, dtype)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        idx.load()
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(seed + 1)
        qs = rng.standard_normal((queries, dim)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        idx.search(qs[:1], k)  # first call pays page faults and BLAS start-up
        times = []
        for q in qs:
            t0 = time.perf_counter()
            idx.search(q[None, :], k)
            times.append(time.perf_counter() - t0)
        # Cross-check one query against a brute-force float64 ranking.
        s, i = idx.search(qs[:1], k)
        exact = np.argsort(-(idx.embeddings.astype(np.float64) @ qs[0].astype(np.float64)))[:k]  # type: ignore[union-attr]
    times.sort()
    return {
        "n": n,
        "dim": dim,
        "dtype": dtype,
        "queries": queries,
        "k": k,
        "build_seconds": round(build_s, 3),
        "load_seconds": round(load_s, 3),
        "query_ms_median": round(1000 * times[len(times) // 2], 2),
        "query_ms_p90": round(1000 * times[int(len(times) * 0.9) - 1], 2),
        "query_ms_max": round(1000 * times[-1], 2),
        "top_k_matches_bruteforce": bool(set(i[0].tolist()) == set(exact.tolist())),
    }
