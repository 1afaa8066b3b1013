"""Index query benchmark: a generated N x DIM index (no scan), per-query milliseconds."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.index import EmbeddingIndex, IndexKey, IndexMeta


def build_synthetic_index(path: Path, n: int, dim: int, seed: int = 0, dtype: str = "float16") -> EmbeddingIndex:
    """A complete index of ``n`` random unit vectors, written through the index's own storage code."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        chunks.append(block.astype(dtype))
    idx = EmbeddingIndex(path)
    idx.claim()
    ids = np.arange(n, dtype=np.int64)
    idx.write_arrays(1, ids, np.concatenate(chunks))
    idx.write_table(
        idx.file("catalog", 1),
        {
            "id": ids.tolist(),
            "locator": [f"synthetic:{i}" for i in range(n)],
            "identity": [""] * n,
            "label": [None] * n,
            "status": ["embedded"] * n,
            "detail": [""] * n,
        },
    )
    key = IndexKey("synthetic", "synthetic", "synthetic", "-", dim, dtype)
    idx.write_meta(
        IndexMeta(key=key, dataset="synthetic", generation=1, next_id=n, records=n, embedded=n, complete=True)
    )
    return idx


def bench_index(
    n: int = 500_000, dim: int = 512, queries: int = 20, k: int = 9, dtype: str = "float16", seed: int = 0
) -> dict[str, Any]:
    """Query latency on a generated ``n`` x ``dim`` index: load time, then per-query milliseconds."""
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
        _s, i = idx.search(qs[:1], k)
        assert idx.embeddings is not None
        exact = np.argsort(-(idx.embeddings.astype(np.float64) @ qs[0].astype(np.float64)))[:k]
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
