"""The scan runner: starts producers and consumers, feeds work, watches them, merges an exact top-k."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.atomic import DiskFullError
from autotune.data.sources import ImageSource, Record
from autotune.engine.config import EngineConfig, gpu_count
from autotune.engine.consumer import ConsumerSpec, EmbeddingSink, consumer_main
from autotune.engine.producer import ProducerSpec, producer_main
from autotune.engine.scheduler import make_batches, static_weights, weighted_order
from autotune.engine.sink import ShardSinkFactory
from autotune.engine.telemetry import bottleneck, steady_state
from autotune.engine.topk import merge_topk
from autotune.engine.transport import SlotPool
from autotune.errors import AutotuneError, DataError
from autotune.models.backends import BackendSpec, fake_text_embeddings

POLL_S = 0.1  # how often the parent checks that every worker is still alive
JOIN_S = 10.0  # grace period for workers to exit after their sentinel


class ScanAborted(AutotuneError):
    """A worker died or failed; the scan was stopped and every worker cleaned up."""


class ScanMismatch(AutotuneError):
    """The scan's books do not balance: images embedded plus skipped differ from the records requested."""


def check_accounting(requested: Sequence[int], embedded: Sequence[np.ndarray], skipped: Sequence[int]) -> None:
    """Raise :class:`ScanMismatch` unless every requested id was embedded or skipped, and none embedded twice.

    A record lost between producer and consumer, or one embedded twice (duplicate ids in the record list),
    would otherwise silently skew the top-k, the index and the measured images/s.
    """
    done = np.concatenate(embedded).astype(np.int64, copy=False) if embedded else np.zeros(0, np.int64)
    if len(done) + len(skipped) != len(requested):
        raise ScanMismatch(
            f"scan bookkeeping mismatch: {len(done)} images embedded + {len(skipped)} skipped "
            f"!= {len(requested)} requested"
        )
    ids, counts = np.unique(done, return_counts=True)
    twice = ids[counts > 1]
    if len(twice):
        raise ScanMismatch(
            f"scan bookkeeping mismatch: record id {int(twice[0])} was embedded {int(counts[counts > 1][0])} "
            f"times ({len(twice)} ids more than once); record ids must be unique"
        )
    accounted = np.sort(np.concatenate([done, np.asarray(skipped, np.int64)]))
    if not np.array_equal(accounted, np.sort(np.asarray(requested, np.int64))):
        raise ScanMismatch("scan bookkeeping mismatch: the ids embedded or skipped are not the ids requested")


@dataclass
class ScanProgress:
    """What an ``on_batch`` callback sees after each finished batch."""

    images: int
    total: int
    elapsed_s: float
    batch_log: list[tuple[float, int, int]]


@dataclass
class ScanResult:
    """Outcome of one scan: exact top-k per query, throughput figures, skips and per-worker telemetry."""

    config: EngineConfig
    total_records: int
    images: int
    skipped: list[dict[str, Any]]
    seconds: float
    startup_s: float
    scan_seconds: float
    images_per_s: float
    steady_images_per_s: float
    topk_scores: np.ndarray
    topk_ids: np.ndarray
    workers: list[dict[str, Any]]
    bottleneck: str
    batch_log: list[tuple[float, int, int]] = field(repr=False)

    def hits(self, query: int = 0) -> list[tuple[int, float]]:
        """(id, score) pairs of one query's top-k, best first."""
        return [(int(i), float(s)) for i, s in zip(self.topk_ids[query], self.topk_scores[query], strict=True)]

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-ready figures."""
        return {
            "images": self.images,
            "skipped": len(self.skipped),
            "records": self.total_records,
            "seconds": round(self.seconds, 3),
            "startup_s": round(self.startup_s, 3),
            "scan_seconds": round(self.scan_seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "steady_images_per_s": round(self.steady_images_per_s, 2),
            "bottleneck": self.bottleneck,
            "config": self.config.describe(),
        }


def preprocess_spec_for(model_id: str) -> Any:
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
    if model_id.startswith("fake:"):
        from autotune.models.backends import _fake_dim

        return fake_text_embeddings(list(texts), _fake_dim(model_id))
    from autotune.models.loading import encode_texts, load_clip

    return encode_texts(load_clip(model_id), list(texts)).numpy().astype(np.float32)


def _core_plan(config: EngineConfig) -> tuple[list[tuple[int, ...] | None], list[tuple[int, ...] | None]]:
    """Disjoint core sets for producers and CPU replicas when pinning is on."""
    if not config.pin_cores:
        return [None] * config.producers, [None] * config.cpu_models

    cores = sorted(os.sched_getaffinity(0))
    prod: list[tuple[int, ...] | None] = [(cores[i],) for i in range(config.producers)]
    start = config.producers
    cons: list[tuple[int, ...] | None] = []
    for c in range(config.cpu_models):
        cons.append(tuple(cores[start + c * config.cpu_threads : start + (c + 1) * config.cpu_threads]))
    return prod, cons


def _exit_reason(code: int | None) -> str:
    """Readable exit status of a dead worker."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_scan(
    source: ImageSource,
    model_id: str,
    config: EngineConfig,
    *,
    queries: np.ndarray | None = None,
    top_k: int = 9,
    records: Sequence[Record] | None = None,
    sink_factory: Callable[[int], EmbeddingSink] | None = None,
    progress: bool = False,
    on_batch: Callable[[ScanProgress], None] | None = None,
    fake_delay_s: float = 0.0,
) -> ScanResult:
    """Scan ``records`` (default: every record of ``source``) with the producer-consumer engine.

    Producers preprocess into shared memory; each model replica embeds, scores against ``queries``
    (L2-normalised text embeddings, shape (queries, dim)) and keeps a top-k; the parent merges the exact
    global top-k. Corrupt images are skipped and reported. A dying worker stops the scan within about a
    second (:class:`ScanAborted`), a full disk under the sink too (:class:`DiskFullError`); Ctrl-C stops it
    cleanly. No process or shared memory survives either. Every scan ends by checking that each requested
    record was embedded or skipped, none twice (:class:`ScanMismatch`). Every error is one line.

    Example:
        >>> src = open_source("data/")
        >>> q = embed_queries("synthetic:tiny", ["a photo of Felis catus"])
        >>> res = run_scan(src, "synthetic:tiny", EngineConfig(producers=1), queries=q)
        >>> res.hits(0)[:3]
    """
    config.validate()
    recs = list(records if records is not None else source.records())
    if not recs:
        raise DataError(f"nothing to scan: {source.describe()} has no records")
    q = np.zeros((0, 1), np.float32) if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise AutotuneError(f"queries must be a (queries, dim) array, got shape {q.shape}")
    pre = preprocess_spec_for(model_id)
    unit = config.unit_batch()
    batches = make_batches(recs, unit)

    # Consumers: CPU replicas, then GPU replicas on every visible GPU.
    devices: list[tuple[str, int, str]] = [("cpu", config.cpu_batch, "fp32")] * config.cpu_models
    for g in range(gpu_count() if config.gpu_models else 0):
        devices += [(f"cuda:{g}", config.gpu_batch, config.gpu_precision)] * config.gpu_models
    n_cons = len(devices)
    per_consumer_slots = [math.ceil(b / unit) for _d, b, _p in devices]
    pool = SlotPool.create(
        slots=sum(per_consumer_slots) * config.queue_depth + config.producers,
        capacity=unit,
        height=pre.crop,
        width=pre.crop,
    )
    ctx = mp.get_context("spawn")  # CUDA and torch's thread pools are only safe in spawned children
    tasks: Any = ctx.Queue()
    free_slots: Any = ctx.Queue()
    events: Any = ctx.Queue()
    go: Any = ctx.Event()  # producers start once every replica has loaded its model
    static = config.scheduling == "static" and n_cons > 1
    ready = [ctx.Queue() for _ in range(n_cons if static else 1)]
    for s in range(pool.layout.slots):
        free_slots.put(s)
    prod_cores, cons_cores = _core_plan(config)
    procs: dict[tuple[str, int], Any] = {}
    start = time.perf_counter()
    bar = _Progress(len(recs)) if progress else None
    completed = False
    try:
        for c, (device, batch, precision) in enumerate(devices):
            spec = ConsumerSpec(
                index=c,
                device=device,
                backend=BackendSpec(
                    model_id=model_id,
                    device=device,
                    precision=precision,
                    backend=config.cpu_backend if device == "cpu" else "eager",
                    fake_delay_s=fake_delay_s,
                    batch=batch,
                ),
                layout=pool.layout,
                queries=q,
                top_k=top_k,
                threads=config.cpu_threads if device == "cpu" else 1,
                batch=batch,
                cores=cons_cores[c] if device == "cpu" else None,
                sink_factory=sink_factory,
                parent_pid=os.getpid(),
            )
            p = ctx.Process(
                target=consumer_main,
                args=(spec, ready[c if static else 0], free_slots, events),
                name=f"consumer-{c}-{device}",
                daemon=True,
            )
            p.start()
            procs[("consumer", c)] = p
        for i in range(config.producers):
            pspec = ProducerSpec(
                index=i, source=source, layout=pool.layout, preprocess=pre, cores=prod_cores[i], parent_pid=os.getpid()
            )
            p = ctx.Process(
                target=producer_main,
                args=(pspec, tasks, free_slots, ready, events, go),
                name=f"producer-{i}",
                daemon=True,
            )
            p.start()
            procs[("producer", i)] = p

        probe_pending: set[int] = set()
        remaining = list(range(len(batches)))
        tasks_closed = False
        if static:
            probes = weighted_order([1.0] * n_cons, min(config.probe_batches * n_cons, len(batches)))
            for b, target in enumerate(probes):
                tasks.put((b, target, batches[b]))
                probe_pending.add(b)
            remaining = remaining[len(probes) :]
        else:
            for b in remaining:
                tasks.put((b, 0, batches[b]))
            remaining = []
            for _ in range(config.producers):
                tasks.put(None)
            tasks_closed = True

        probe_busy = [[0.0, 0] for _ in range(n_cons)]
        done: dict[tuple[str, int], dict[str, Any]] = {}
        workers_info: dict[tuple[str, int], dict[str, Any]] = {}
        results: list[tuple[np.ndarray, np.ndarray]] = []
        skipped: list[dict[str, Any]] = []
        embedded_ids: list[np.ndarray] = []
        batch_log: list[tuple[float, int, int]] = []
        images = 0
        sentinels_sent = False
        t_go: float | None = None
        while True:
            try:
                ev = events.get(timeout=POLL_S)
            except queue.Empty:
                for key, p in procs.items():
                    if key not in done and not p.is_alive():
                        raise ScanAborted(
                            f"{key[0]} {key[1]} (pid {p.pid}) {_exit_reason(p.exitcode)}; scan stopped"
                        ) from None
                ev = None
            if ev is not None:
                kind = ev[0]
                if kind == "batch":
                    _, c, bnos, n, t_done, busy, ids = ev
                    images += n
                    embedded_ids.append(ids)
                    batch_log.append((t_done - start, n, c))
                    for b in bnos:
                        if b in probe_pending:
                            probe_pending.discard(b)
                            probe_busy[c][0] += busy
                            probe_busy[c][1] += n
                    if bar:
                        bar.update(images + len(skipped), time.perf_counter() - start)
                    if on_batch:
                        on_batch(ScanProgress(images, len(recs), time.perf_counter() - start, batch_log))
                elif kind == "produced":
                    _, _i, bno, n, skips = ev
                    skipped += [dict(id=r, locator=loc, reason=why, detail=d) for r, loc, why, d in skips]
                    if n == 0:
                        probe_pending.discard(bno)
                elif kind == "ready":
                    _, role, idx, pid, info = ev
                    workers_info[(role, idx)] = {"pid": pid, **info}
                    if t_go is None and len(workers_info) == len(procs):
                        go.set()
                        t_go = time.perf_counter()
                elif kind == "done":
                    _, role, idx, stats, extra = ev
                    done[(role, idx)] = stats
                    if role == "consumer" and extra is not None:
                        results.append(extra)
                elif kind == "error":
                    _, role, idx, summary, disk_full = ev
                    # A full disk is the user's to fix, not a crash: its own line, as the writer worded it.
                    if disk_full:
                        raise DiskFullError(summary)
                    raise ScanAborted(f"{role} {idx} failed: {summary}")
            if not tasks_closed and not probe_pending:
                speeds = [b / n if n else 0.0 for b, n in probe_busy]
                weights = static_weights(speeds)
                for b, target in zip(remaining, weighted_order(weights, len(remaining)), strict=True):
                    tasks.put((b, target, batches[b]))
                remaining = []
                for _ in range(config.producers):
                    tasks.put(None)
                tasks_closed = True
            producers_done = all(
                ("producer", i) in done and not procs[("producer", i)].is_alive() for i in range(config.producers)
            )
            # Sentinels go only after every producer has exited: its queue feeder has then flushed all of
            # its batches, so no sentinel can overtake real work in a ready queue.
            if producers_done and not sentinels_sent:
                if static:
                    for rq in ready:
                        rq.put(None)
                else:
                    for _ in range(n_cons):
                        ready[0].put(None)
                sentinels_sent = True
            if sentinels_sent and all(("consumer", c) in done for c in range(n_cons)):
                break
        seconds = time.perf_counter() - start
        if bar:
            bar.update(images + len(skipped), seconds, final=True)
        check_accounting([r.id for r in recs], embedded_ids, [s["id"] for s in skipped])
        k_scores, k_ids = merge_topk(results, top_k) if len(q) else (np.zeros((0, 0)), np.zeros((0, 0), int))
        t_go = t_go if t_go is not None else start
        steady, _warm = steady_state(batch_log, n_cons)
        workers = []
        for (role, idx), stats in sorted(done.items()):
            info = workers_info.get((role, idx), {})
            workers.append(
                {"role": role, "index": idx, "pid": info.get("pid"), "stats": stats, "affinity": info.get("affinity")}
            )
        startup = t_go - start
        scan_seconds = seconds - startup
        completed = True
        return ScanResult(
            config=config,
            total_records=len(recs),
            images=images,
            skipped=sorted(skipped, key=lambda s: s["id"]),
            seconds=seconds,
            startup_s=startup,
            scan_seconds=scan_seconds,
            images_per_s=images / scan_seconds if scan_seconds > 0 else 0.0,
            steady_images_per_s=steady,
            topk_scores=k_scores,
            topk_ids=k_ids,
            workers=workers,
            bottleneck=bottleneck(workers),
            batch_log=batch_log,
        )
    finally:
        if bar:
            bar.close()
        _shutdown(list(procs.values()), [tasks, free_slots, events, *ready], graceful=completed)
        pool.close()
        if isinstance(sink_factory, ShardSinkFactory):
            # A replica stopped by force mid-commit (another one filled the disk, Ctrl-C) leaves a temporary file.
            sink_factory.remove_leftovers()


def _shutdown(procs: list[Any], queues: list[Any], graceful: bool) -> None:
    """Stop every worker (letting it exit after a finished scan, by force otherwise); release the queues."""
    deadline = time.monotonic() + (JOIN_S if graceful else 0.0)
    for p in procs:
        if p.is_alive():
            p.join(timeout=max(deadline - time.monotonic(), 0.0))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)
    for q in queues:
        q.cancel_join_thread()  # never block on a feeder whose reader is gone
        q.close()


class _Progress:
    """A Rich progress bar with images/s and ETA, on stderr."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("scan"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._p.add_task("scan", total=total, rate="")
        self._p.start()

    def update(self, done: int, elapsed: float, final: bool = False) -> None:
        """Move the bar and refresh the rate."""
        rate = f"{done / elapsed:,.1f} img/s" if elapsed > 0 else ""
        self._p.update(self._task, completed=done, rate=rate)

    def close(self) -> None:
        """Stop rendering."""
        self._p.stop()
