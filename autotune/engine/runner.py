"""The scan runner: a short orchestration of named steps (start workers, feed tasks, watch events, finish).

Workers are built from picklable specs inside their own processes (forked from a fork server that has
imported torch once, see :func:`autotune.engine.lifecycle.worker_context`); batches travel as shared-memory slot
indices; every message is a typed event (:mod:`autotune.engine.events`); the parent keeps the books
(:mod:`autotune.engine.result`) and merges the exact global top-k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from autotune.atomic import DiskFullError
from autotune.data.sources import ImageSource, Record
from autotune.engine.config import EngineConfig, config_calibration
from autotune.engine.consumer import EmbeddingSink
from autotune.engine.events import BatchDone, Done, Failed, Produced, Ready
from autotune.engine.result import ScanBooks, ScanMismatch, ScanProgress, ScanResult, check_accounting
from autotune.engine.scheduler import TaskFeeder, make_batches
from autotune.engine.sink import ShardSinkFactory
from autotune.engine.workers import ScanAborted, ScanJob, Workers, replicas_for
from autotune.errors import AutotuneError, DataError
from autotune.models.backends import fake_text_embeddings
from autotune.progress import ProgressFactory, Task, rate_info

if TYPE_CHECKING:  # the module imports torch; workers and model_facts import it only when needed
    from autotune.preprocess import PreprocessSpec

# Re-exported: callers have long imported the scan's result types from here.
__all__ = [
    "ScanAborted", "ScanMismatch", "ScanProgress", "ScanResult", "check_accounting", "embed_queries",
    "preprocess_spec_for", "run_scan",
]  # fmt: skip


def preprocess_spec_for(model_id: str) -> PreprocessSpec:
    """The fast path's settings for a model, from its cached facts (no weights loaded, no transformers import).

    Also fills the facts and weights-hash sidecars before any worker starts, so replicas only read them.
    """
    from autotune.preprocess import PreprocessSpec

    if model_id.startswith("fake:"):
        return PreprocessSpec()
    from autotune.models.facts import model_facts

    return model_facts(model_id).preprocess


def embed_queries(model_id: str, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings (queries, dim) for ``texts`` with the model's text tower."""
    return embed_queries_checked(model_id, texts)[0]


def embed_queries_checked(model_id: str, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    """Text embeddings as :func:`embed_queries`, and which texts were cut to the text tower's context."""
    if model_id.startswith("fake:"):
        from autotune.models.backends import _fake_dim

        return fake_text_embeddings(list(texts), _fake_dim(model_id)), [False] * len(texts)
    from autotune.models.text import TextEncoder

    return TextEncoder(model_id).encode(texts)


class _Reporter:
    """Tells the caller about each finished batch: a progress task and an ``on_batch`` callback, both optional."""

    def __init__(self, task: Task | None, on_batch: Callable[[ScanProgress], None] | None, total: int) -> None:
        """Nothing is reported where both are None."""
        self.task, self.on_batch, self.total = task, on_batch, total

    def batch(self, books: ScanBooks) -> None:
        """One more batch is done."""
        if self.task is not None:
            elapsed = time.perf_counter() - books.start
            self.task.update(books.accounted, rate_info(books.accounted, elapsed))
        if self.on_batch is not None:
            self.on_batch(ScanProgress(books.images, self.total, time.perf_counter() - books.start, books.batch_log))

    def final(self, books: ScanBooks, end: float) -> None:
        """The whole scan is done: the bar shows the final count and the rate over the whole scan."""
        if self.task is not None:
            self.task.update(books.accounted, rate_info(books.accounted, end - books.start))


def _failure(ev: Failed) -> AutotuneError:
    """The one-line error a worker's failure becomes (a full disk is the user's to fix, not a crash)."""
    if ev.disk_full:
        return DiskFullError(ev.summary)
    return ScanAborted(f"{ev.role} {ev.worker} failed: {ev.summary}")


def _watch(workers: Workers, feeder: TaskFeeder, books: ScanBooks, report: _Reporter) -> float | None:
    """Handle events until every replica is done; return when all models had loaded (None if never)."""
    t_go: float | None = None
    sentinels_sent = False
    while True:
        ev = workers.next_event(books)
        if isinstance(ev, BatchDone):
            books.batch(ev)
            feeder.embedded(ev.consumer, ev.batch_nos, ev.images, ev.busy_s)
            report.batch(books)
        elif isinstance(ev, Produced):
            books.produced(ev)
            if ev.images == 0:
                feeder.empty(ev.batch_no)
        elif isinstance(ev, Ready):
            books.ready(ev)
            if t_go is None and len(books.info) == len(workers.procs):
                workers.go.set()
                t_go = time.perf_counter()
        elif isinstance(ev, Done):
            books.finished(ev)
        elif isinstance(ev, Failed):
            raise _failure(ev)
        feeder.step()
        # Sentinels go only after every producer has exited: its queue feeder has then flushed all of its
        # batches, so no sentinel can overtake real work in a ready queue.
        if not sentinels_sent and workers.producers_exited(books):
            workers.end_consumers()
            sentinels_sent = True
        if sentinels_sent and workers.consumers_done(books):
            return t_go


def _scan_records(source: ImageSource, records: Sequence[Record] | None) -> list[Record]:
    """The records to scan (default: every record of ``source``); refuse an empty scan."""
    recs = list(records if records is not None else source.records())
    if not recs:
        raise DataError(f"nothing to scan: {source.describe()} has no records")
    return recs


def _query_matrix(queries: np.ndarray | None) -> np.ndarray:
    """The queries as a contiguous float32 (queries, dim) array (no queries: an empty one)."""
    q = np.zeros((0, 1), np.float32) if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise AutotuneError(f"queries must be a (queries, dim) array, got shape {q.shape}")
    return q


def _fill_locators(result: ScanResult, records: Sequence[Record]) -> None:
    """A replica that decodes (decode: gpu) knows a skipped image's id only: name its locator here."""
    if any(not s["locator"] for s in result.skipped):
        where = {r.id: r.locator for r in records}
        for s in result.skipped:
            s["locator"] = s["locator"] or where.get(s["id"], "")


class ScanOptions(TypedDict, total=False):
    """The keyword options every scan engine takes besides its own (:func:`run_scan` documents each)."""

    queries: np.ndarray | None
    top_k: int
    records: Sequence[Record] | None
    sink_factory: Callable[[int], EmbeddingSink] | None
    progress: ProgressFactory | None
    on_batch: Callable[[ScanProgress], None] | None
    fake_delay_s: float
    calibration: str | None


def run_scan(
    source: ImageSource,
    model_id: str,
    config: EngineConfig,
    *,
    queries: np.ndarray | None = None,
    top_k: int = 9,
    records: Sequence[Record] | None = None,
    sink_factory: Callable[[int], EmbeddingSink] | None = None,
    progress: ProgressFactory | None = None,
    on_batch: Callable[[ScanProgress], None] | None = None,
    fake_delay_s: float = 0.0,
    calibration: str | None = None,
) -> ScanResult:
    """Scan ``records`` (default: every record of ``source``) with the producer-consumer engine.

    Producers preprocess into shared memory; each model replica embeds, scores against ``queries``
    (L2-normalised text embeddings, shape (queries, dim)) and keeps a top-k; the parent merges the exact
    global top-k. Corrupt images are skipped and reported. A dying worker stops the scan within about a
    second (:class:`ScanAborted`), a full disk under the sink too (:class:`DiskFullError`); Ctrl-C stops it
    cleanly. No process or shared memory survives either. Every scan ends by checking that each requested
    record was embedded or skipped, none twice (:class:`ScanMismatch`). Every error is one line.
    ``progress`` starts one task ("scan", records) that counts records embedded or skipped; the library
    itself never draws. ``calibration``: the stored calibration set a statically quantised CPU backend runs
    with (default: one drawn from ``source``).

    Example:
        >>> src = open_source("data/")
        >>> q = embed_queries("synthetic:tiny", ["a photo of Felis catus"])
        >>> res = run_scan(src, "synthetic:tiny", EngineConfig(producers=1), queries=q, progress=console.bar)
        >>> res.hits(0)[:3]
    """
    config.validate()
    recs = _scan_records(source, records)
    q = _query_matrix(queries)
    pre = preprocess_spec_for(model_id)
    job = ScanJob(
        source, model_id, config, pre, q, top_k, sink_factory, fake_delay_s, replicas_for(config),
        calibration=calibration or config_calibration(source, model_id, config),
    )  # fmt: skip
    workers = Workers(job)
    books = ScanBooks(start=time.perf_counter())
    task = progress("scan", len(recs)) if progress is not None else None
    completed = False
    try:
        workers.start(job)
        probes = config.probe_batches if job.static else None
        feeder = TaskFeeder(workers.tasks.put, make_batches(recs, config.unit_batch()), workers.consumers,
                            config.producers, probes)  # fmt: skip
        report = _Reporter(task, on_batch, len(recs))
        t_go = _watch(workers, feeder, books, report)
        end = time.perf_counter()
        report.final(books, end)
        result = books.result(config, [r.id for r in recs], len(q), top_k, t_go, end)
        _fill_locators(result, recs)
        completed = True
        return result
    finally:
        if task is not None:
            task.close()
        workers.shutdown(graceful=completed)
        if isinstance(sink_factory, ShardSinkFactory):
            # A replica stopped by force mid-commit (another one filled the disk, Ctrl-C) leaves a temporary file.
            sink_factory.remove_leftovers()
