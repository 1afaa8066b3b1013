"""What a retrieval does before its first image at the reference scale: listing, identities and update plan.

A database of ``n`` entries is built from hard links to a small generated corpus, under distinct names in
iNaturalist's shape (a folder per label, nested folders of about a hundred images), so 500,000 entries cost
seconds and no disk. Each measurement runs in a fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data import open_source
from autotune.defaults import default_dataset
from autotune.index import EmbeddingIndex, IndexKey, IndexMeta, is_up_to_date, plan_update
from autotune.index.update import EMBEDDED
from autotune.progress import Log, ProgressFactory, quiet, silent

#: The placeholder index's key: no model made these embeddings, and none ever reads them.
PLACEHOLDER_KEY = IndexKey("placeholder", "placeholder", "cpu:placeholder", "-", 512, "float16")
_PER_FOLDER = 100  # images per innermost folder, about iNaturalist 2021's train_mini (50) to train (270)


def link_database(base: Path, out: Path, n: int, progress: ProgressFactory | None = None) -> int:
    """Fill ``out`` with ``n`` hard links to ``base``'s images (cycled), each under its own name; their count.

    Entry ``i`` is ``out/<label>/<folder>/<i:07d>-<name>``: entries that share content have distinct names, so
    they are distinct images with their own ids.
    """
    images = sorted(base.rglob("*.jpg"))
    task = (progress or silent)("index-scale: linking", n)
    made: set[Path] = set()
    try:
        for i in range(n):
            src = images[i % len(images)]
            folder = out / src.parent.name / f"{i // len(images):04d}-{(i % len(images)) // _PER_FOLDER:02d}"
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            os.link(src, folder / f"{i:07d}-{src.name}")
            if i % 10_000 == 9_999:
                task.advance(10_000)
        task.advance(n % 10_000)
    finally:
        task.close()
    return n


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_plan(db: str, index_dir: str) -> dict[str, Any]:
    """Listing, identities and the update plan of ``db`` into the index at ``index_dir``, timed (a worker).

    Exactly what a retrieval does before its first image with a new index: open and list the database, take
    its identities and fingerprint, compare with the (empty) catalog and commit the plan.
    """
    t0 = time.perf_counter()
    source = open_source(db)
    records, identities, fingerprint = source.records(), source.identities(), source.fingerprint()
    listed = time.perf_counter() - t0
    index = EmbeddingIndex(Path(index_dir))
    with index.writer():
        meta = index.read_meta() or IndexMeta(key=PLACEHOLDER_KEY, dataset=str(source.path))
        plan = plan_update(index, meta, records, identities, fingerprint)
    return {
        "seconds": time.perf_counter() - t0,
        "listing_s": listed,
        "entries": len(records),
        "distinct_locators": len({r.locator for r in records}),
        "counts": plan.counts,
        "to_embed": len(plan.todo),
        "peak_rss_mb": _peak_rss_mb(),
    }


def measure_check(db: str, index_dir: str) -> dict[str, Any]:
    """The up-to-date check of a retrieval over ``db`` with its complete index at ``index_dir``, timed (a worker)."""
    t0 = time.perf_counter()
    source = open_source(db)
    source.records()
    fingerprint = source.fingerprint()
    current = is_up_to_date(EmbeddingIndex(Path(index_dir)).read_meta(), PLACEHOLDER_KEY, fingerprint)
    return {"seconds": time.perf_counter() - t0, "up_to_date": current, "peak_rss_mb": _peak_rss_mb()}


def complete_placeholder_index(index_dir: Path) -> int:
    """Commit the index's pending plan as if every image were embedded (zero placeholder embeddings)."""
    index = EmbeddingIndex(index_dir)
    meta = index.read_meta()
    assert meta is not None and meta.pending is not None
    generation = meta.pending["generation"]
    catalog = index.read_table(index.file("plan", generation))
    n = len(catalog["id"])
    catalog["status"] = [EMBEDDED] * n
    index.write_table(index.file("catalog", generation), catalog)
    ids = np.asarray(catalog["id"], dtype=np.int64)
    order = np.argsort(ids)
    np.save(index.file("ids", generation), ids[order])
    # A sparse file of zeros: 500,000 x 512 float16 placeholders cost no writing, and nothing reads them here.
    emb = np.lib.format.open_memmap(index.file("embeddings", generation), mode="w+", dtype=np.float16, shape=(n, 512))
    del emb
    meta.generation, meta.next_id, meta.complete = generation, meta.pending["next_id"], True
    meta.dataset_fingerprint, meta.pending = meta.pending["fingerprint"], None
    meta.records = meta.embedded = n
    index.write_meta(meta)
    index.drop_update()
    return n


def _in_fresh_process(func: Any, *args: str) -> dict[str, Any]:
    """Run ``func(*args)`` in a spawned process (its own imports and memory) and return its figures."""
    with mp.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(func, args)
    return result


def bench_index_scale(
    n: int = 500_000, base: int = 2000, progress: ProgressFactory | None = None, log: Log | None = None
) -> dict[str, Any]:
    """Time everything before the first image at ``n`` entries: the plan without an index, the check with one.

    The database is ``n`` hard links to the generated ``base``-image corpus (see :func:`link_database`), in a
    temporary folder on the same disk. ``plan_s`` is a retrieval's listing, identities and update plan with no
    index (:func:`measure_plan`); the plan is then committed as a complete index with placeholder embeddings
    (scanning would take hours), and ``up_to_date_check_s`` is a retrieval finding that index up to date
    (:func:`measure_check`); ``replan_s`` is the plan again over the complete index, what an update pays
    before its first new image. Each runs in a fresh process; ``peak_rss_mb`` is the largest of their peaks.

    Example:
        >>> bench_index_scale(n=2000, base=200)["up_to_date"]  # doctest: +SKIP
        True
    """
    say = log or quiet
    corpus = default_dataset(n=base)
    with tempfile.TemporaryDirectory(prefix="autotune-scale-") as tmp:
        # A copy of the corpus beside the links: hard links cannot cross from the cache to another disk.
        local = Path(tmp) / "base"
        shutil.copytree(corpus, local)
        db, index_dir = Path(tmp) / "db", Path(tmp) / "index"
        t0 = time.perf_counter()
        link_database(local, db, n, progress)
        build_s = time.perf_counter() - t0
        say(f"{n:,} entries linked in {build_s:.1f} s; timing the plan")
        plan = _in_fresh_process(measure_plan, str(db), str(index_dir))
        complete_placeholder_index(index_dir)
        say(f"plan: {plan['seconds']:.2f} s; timing the up-to-date check")
        check = _in_fresh_process(measure_check, str(db), str(index_dir))
        replan = _in_fresh_process(measure_plan, str(db), str(index_dir))
    return {
        "n": n,
        "base_images": base,
        "entries": plan["entries"],
        "distinct_locators": plan["distinct_locators"],
        "plan_s": round(plan["seconds"], 3),
        "listing_s": round(plan["listing_s"], 3),
        "up_to_date_check_s": round(check["seconds"], 3),
        "up_to_date": check["up_to_date"],
        "replan_s": round(replan["seconds"], 3),
        "replan_kept": replan["counts"]["kept"],
        "peak_rss_mb": round(max(plan["peak_rss_mb"], check["peak_rss_mb"], replan["peak_rss_mb"]), 1),
        "link_s": round(build_s, 3),
        "cores": len(os.sched_getaffinity(0)),
    }
