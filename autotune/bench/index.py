"""Index query benchmark: a generated N x DIM index (no scan), per-query milliseconds."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.defaults import default_dataset
from autotune.engine.config import EngineConfig
from autotune.index import DEFAULT_SCAN, EmbeddingIndex, IndexKey, IndexMeta
from autotune.progress import Log, quiet
from autotune.retrieval import retrieve, safe_default_config

DEFAULT_ADDED_SEED = 20_001  # the added images are another seed's corpus: new content, not copies


def build_synthetic_index(
    path: Path,
    n: int,
    dim: int,
    seed: int = 0,
    dtype: str = "float16",
    *,
    key: IndexKey | None = None,
    locators: Sequence[str] | None = None,
    labels: Sequence[str | None] | None = None,
) -> EmbeddingIndex:
    """A complete index of ``n`` random unit vectors, written through the index's own storage code.

    ``key`` names the model it claims to be of (default: a ``synthetic`` key); ``locators`` and ``labels``, when
    given, are repeated over the ``n`` rows, so that a server can show real images for every id.
    """
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
    locs = [locators[i % len(locators)] for i in range(n)] if locators else [f"synthetic:{i}" for i in range(n)]
    labs = [labels[i % len(labels)] for i in range(n)] if labels else [None] * n
    idx.write_table(
        idx.file("catalog", 1),
        {
            "id": ids.tolist(),
            "locator": locs,
            "identity": [""] * n,
            "label": labs,
            "status": ["embedded"] * n,
            "detail": [""] * n,
        },
    )
    key = IndexKey(key.model, key.weights_hash, key.recipe, key.preprocess, dim, dtype) if key else None
    key = key or IndexKey("synthetic", "synthetic", "synthetic", "-", dim, dtype)
    idx.write_meta(
        IndexMeta(key=key, dataset="synthetic", generation=1, next_id=n, records=n, embedded=n, complete=True)
    )
    return idx


def bench_index(
    n: int = 500_000,
    dim: int = 512,
    queries: int = 20,
    k: int = 9,
    dtype: str = "float16",
    seed: int = 0,
    scan: str = DEFAULT_SCAN,
) -> dict[str, Any]:
    """Query latency on a generated ``n`` x ``dim`` index: load time, then per-query milliseconds.

    The index is written into a temporary folder, loaded (timed), warmed with one query, then each of
    ``queries`` random unit queries is timed alone; one is checked against a brute-force float64 ranking.
    ``scan`` is the index's query path (``rerank``, the default, or ``exact``).

    Example:
        >>> bench_index(n=1000, dim=32, queries=5)["top_k_matches_bruteforce"]  # doctest: +SKIP
        True
    """
    with tempfile.TemporaryDirectory(prefix="autotune-index-") as tmp:
        t0 = time.perf_counter()
        build_synthetic_index(Path(tmp) / "index", n, dim, seed, dtype)
        idx = EmbeddingIndex(Path(tmp) / "index", scan=scan)
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
        "scan": scan,
        "queries": queries,
        "k": k,
        "build_seconds": round(build_s, 3),
        "load_seconds": round(load_s, 3),
        "query_ms_median": round(1000 * times[len(times) // 2], 2),
        "query_ms_p90": round(1000 * times[int(len(times) * 0.9) - 1], 2),
        "query_ms_max": round(1000 * times[-1], 2),
        "top_k_matches_bruteforce": bool(set(i[0].tolist()) == set(exact.tolist())),
    }


def bench_index_update(
    n: int = 20_000,
    added: float = 0.01,
    model: str = "synthetic:clip-vit-base-patch32",
    config: EngineConfig | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Scan time of an index update after adding ``added`` x ``n`` new images, against a full rebuild.

    A generated corpus of ``n`` images (cached, hard-linked into a scratch folder) is indexed; new images are
    added; the update runs (timed), then a full rebuild of the changed database into another index (timed).
    Both go through :func:`autotune.retrieval.retrieve`, the real path. Start-up (spawn + model load) is
    reported apart from the scan; the update's total wall time includes listing, planning and the commit.
    ``log`` gets a line per scan (None: silence).

    Example:
        >>> bench_index_update(n=200, added=0.05)["update_over_rebuild_scan"] < 1  # doctest: +SKIP
        True
    """
    say = log or quiet
    cfg = (config or safe_default_config()).validate()
    extra = max(1, round(n * added))
    base = default_dataset(n=n)
    fresh = default_dataset(n=extra, seed=DEFAULT_ADDED_SEED)
    with tempfile.TemporaryDirectory(prefix="autotune-update-") as tmp:
        db = Path(tmp) / "db"
        shutil.copytree(base, db, copy_function=os.link)
        runs: dict[str, Any] = {}

        def run(name: str, index: str, **kw: Any) -> None:
            """Retrieve into index folder ``index``, timed; record the run's figures under ``name``."""
            say(f"{name}: scanning into {index}")
            t0 = time.perf_counter()
            res = retrieve(["a photo of Felis catus"], dataset=str(db), model=model, config=cfg,
                           index_dir=Path(tmp) / index, **kw)  # fmt: skip
            runs[name] = {
                "mode": res.mode,
                "images": res.images,
                "scan_seconds": round(res.scan_seconds, 3),
                "startup_s": round(res.startup_s, 3),
                "wall_seconds": round(time.perf_counter() - t0, 3),
                "images_per_s": round(res.images_per_s or 0.0, 2),
                "changes": res.changes,
            }

        run("initial_build", "idx")
        for src in sorted(fresh.rglob("*.jpg")):
            os.link(src, db / src.parent.name / f"new-{src.name}")
        run("update", "idx")
        run("full_rebuild", "rebuilt")
    upd, full = runs["update"], runs["full_rebuild"]
    return {
        "n": n,
        "added": extra,
        "model": model,
        "config": cfg.describe(),
        "runs": runs,
        "update_scan_s": upd["scan_seconds"],
        "rebuild_scan_s": full["scan_seconds"],
        "update_over_rebuild_scan": round(upd["scan_seconds"] / full["scan_seconds"], 4),
        "update_over_rebuild_wall": round(upd["wall_seconds"] / full["wall_seconds"], 4),
    }


def bench_first_run(
    n: int = 10_000,
    repeats: int = 3,
    model: str = "synthetic:clip-vit-base-patch32",
    config: EngineConfig | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The first retrieval (which builds the index) against a ``--rescan`` of the same database, interleaved.

    Both run through :func:`autotune.retrieval.retrieve` on a generated corpus of ``n`` images (cached once
    made), with the same engine configuration; each round builds a new index in an empty folder and runs one
    full scan without an index, in alternating order (ABBA: a machine that drifts within the hour favours
    neither). One unmeasured rescan first warms the page cache and builds the backend's artefacts. Figures
    are medians over ``repeats`` rounds; ``first_over_rescan`` compares scan images/s, ``..._by_wall`` the whole
    calls (listing, planning and the commit included), start-up stated apart.

    Example:
        >>> bench_first_run(n=200, repeats=1, model="synthetic:tiny")["first_over_rescan"]  # doctest: +SKIP
        1.02
    """
    say = log or quiet
    cfg = (config or safe_default_config()).validate()
    data = str(default_dataset(n=n))
    query = ["a photo of Felis catus"]
    runs: dict[str, list[dict[str, Any]]] = {"first_run": [], "rescan": []}
    with tempfile.TemporaryDirectory(prefix="autotune-firstrun-") as tmp:

        def run(name: str, round_no: int) -> None:
            """One timed retrieval: an index build into a new folder, or a rescan."""
            t0 = time.perf_counter()
            if name == "first_run":
                res = retrieve(query, dataset=data, model=model, config=cfg, index_dir=Path(tmp) / f"idx-{round_no}")
            else:
                res = retrieve(query, dataset=data, model=model, config=cfg, rescan=True)
            wall = time.perf_counter() - t0
            runs[name].append(
                {"mode": res.mode, "images": res.images, "images_per_s": round(res.images_per_s or 0.0, 2),
                 "wall_seconds": round(wall, 3),
                 "startup_s": round(res.startup_s, 3), "scan_seconds": round(res.scan_seconds, 3)}
            )  # fmt: skip
            say(f"round {round_no + 1}/{repeats} {name}: {runs[name][-1]['images_per_s']} images/s, {wall:.1f} s")

        say("warm-up: one rescan (page cache, backend artefacts), not measured")
        retrieve(query, dataset=data, model=model, config=cfg, rescan=True)
        for r in range(repeats):
            for name in ("first_run", "rescan") if r % 2 == 0 else ("rescan", "first_run"):
                run(name, r)

    def median(name: str, key: str) -> float:
        """Median of one figure over the rounds."""
        return float(np.median([row[key] for row in runs[name]]))

    first, rescan = median("first_run", "images_per_s"), median("rescan", "images_per_s")
    return {
        "n": n,
        "repeats": repeats,
        "model": model,
        "config": cfg.describe(),
        "first_run_images_per_s": first,
        "rescan_images_per_s": rescan,
        "first_over_rescan": round(first / rescan, 4) if rescan else None,
        "first_run_wall_s": median("first_run", "wall_seconds"),
        "rescan_wall_s": median("rescan", "wall_seconds"),
        # The same comparison over whole calls: a speed ratio, so above 1 means the first run was quicker.
        "first_over_rescan_by_wall": round(median("rescan", "wall_seconds") / median("first_run", "wall_seconds"), 4),
        "runs": runs,
    }
