"""What a scan returns, and the parent's books that add the workers' events up into it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.engine.config import EngineConfig
from autotune.engine.events import BatchDone, Done, Produced, Ready
from autotune.engine.telemetry import bottleneck, steady_state
from autotune.engine.topk import merge_topk
from autotune.errors import AutotuneError


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


@dataclass
class ScanBooks:
    """The parent's running account of a scan, kept from the workers' events; times count from ``start``."""

    start: float
    images: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    embedded_ids: list[np.ndarray] = field(default_factory=list)
    batch_log: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, images, consumer)
    topks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    done: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (role, index) -> stats
    info: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (role, index) -> pid, affinity

    @property
    def accounted(self) -> int:
        """Records embedded or skipped so far (what a progress bar counts)."""
        return self.images + len(self.skipped)

    def ready(self, ev: Ready) -> None:
        """A worker has started."""
        self.info[(ev.role, ev.worker)] = {"pid": ev.pid, **ev.info}

    def produced(self, ev: Produced) -> None:
        """A producer's skipped records."""
        self.skipped += [s._asdict() for s in ev.skips]

    def batch(self, ev: BatchDone) -> None:
        """A replica's finished batch."""
        self.images += ev.images
        self.skipped += [s._asdict() for s in ev.skips]
        self.embedded_ids.append(ev.ids)
        self.batch_log.append((ev.t_done - self.start, ev.images, ev.consumer))

    def finished(self, ev: Done) -> None:
        """A worker's final statistics, and a replica's local top-k."""
        self.done[(ev.role, ev.worker)] = ev.stats
        if ev.role == "consumer" and ev.topk is not None:
            self.topks.append(ev.topk)

    def is_done(self, role: str, index: int) -> bool:
        """Whether that worker has sent its final statistics."""
        return (role, index) in self.done

    def result(
        self, config: EngineConfig, records: Sequence[int], queries: int, top_k: int, t_go: float | None, end: float
    ) -> ScanResult:
        """Check the accounting, merge the exact top-k and add the figures up (start-up timed apart)."""
        consumers = sum(1 for role, _i in self.done if role == "consumer")
        workers = [
            {"role": role, "index": idx, "pid": self.info.get((role, idx), {}).get("pid"), "stats": stats,
             "affinity": self.info.get((role, idx), {}).get("affinity")}
            for (role, idx), stats in sorted(self.done.items())
        ]  # fmt: skip
        go = t_go if t_go is not None else self.start
        return finished_scan(
            config, records, self.embedded_ids, self.skipped, images=self.images, clock=(self.start, go, go, end),
            topk=merge_topk(self.topks, top_k) if queries else None, batch_log=self.batch_log,
            consumers=consumers, workers=workers, bottleneck=bottleneck(workers),
        )  # fmt: skip


def finished_scan(
    config: EngineConfig,
    requested: Sequence[int],
    embedded: Sequence[np.ndarray],
    skipped: list[dict[str, Any]],
    *,
    images: int,
    clock: tuple[float, float, float, float],
    topk: tuple[np.ndarray, np.ndarray] | None,
    batch_log: list[tuple[float, int, int]],
    consumers: int,
    workers: list[dict[str, Any]],
    bottleneck: str,
) -> ScanResult:
    """Any engine's figures of a finished scan, once every requested record is checked embedded or skipped once.

    ``clock``: (start, replicas ready, scan clock start, end) in ``time.perf_counter`` seconds; the local engine
    starts its scan clock when its replicas are ready, Ray at the call (its preprocessing runs ahead while its
    actors load). ``topk``: the merged (scores, ids), None without queries.
    """
    check_accounting(requested, embedded, [s["id"] for s in skipped])
    start, ready, scan_from, end = clock
    steady, _warm = steady_state(batch_log, consumers)
    scan_seconds = end - scan_from
    scores, ids = topk if topk is not None else (np.zeros((0, 0)), np.zeros((0, 0), int))
    return ScanResult(
        config=config,
        total_records=len(requested),
        images=images,
        skipped=sorted(skipped, key=lambda s: s["id"]),
        seconds=end - start,
        startup_s=ready - start,
        scan_seconds=scan_seconds,
        images_per_s=images / scan_seconds if scan_seconds > 0 else 0.0,
        steady_images_per_s=steady,
        topk_scores=scores,
        topk_ids=ids,
        workers=workers,
        bottleneck=bottleneck,
        batch_log=batch_log,
    )
