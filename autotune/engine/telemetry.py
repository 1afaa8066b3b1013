"""Per-worker stage timers, steady-state throughput and bottleneck diagnosis."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageTimer:
    """Accumulates seconds per named stage inside one worker process."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block under ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        """Add seconds to a stage."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter (images, batches, skipped)."""
        self.counts[name] = self.counts.get(name, 0) + n

    def snapshot(self) -> dict[str, Any]:
        """Stage seconds, counters, and idle time (alive but in no stage)."""
        alive = time.perf_counter() - self.started
        busy = sum(self.seconds.values())
        return {
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "counts": dict(self.counts),
            "alive_s": round(alive, 4),
            "idle_s": round(max(alive - busy, 0.0), 4),
            # The worker's own high-water mark: its parent (a fork server) is not the scan, so the scan cannot
            # read it from its children's resource usage.
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


# Stages in which a worker waits on the other side of the pipeline rather than working.
PRODUCER_WAIT = "wait_slot"  # no free slot: consumers are behind
CONSUMER_WAIT = "wait_batch"  # no ready batch: producers are behind


def steady_state(batch_log: Sequence[tuple[float, int, int]], consumers: int) -> tuple[float, float]:
    """Steady-state images/s and the warm-up end time from (t_done, images, consumer) events.

    Warm-up ends when every consumer has finished its first batch (lazy allocations, first-call costs);
    throughput is then the images finished after that point over the time they took. With too little
    data after warm-up, the rate over everything after the first batch is returned instead.
    """
    if not batch_log:
        return 0.0, 0.0
    log = sorted(batch_log)
    first_done: dict[int, float] = {}
    for t, _n, c in log:
        first_done.setdefault(c, t)
    warm = max(first_done.values()) if len(first_done) >= consumers else log[0][0]
    after = [(t, n) for t, n, _c in log if t > warm]
    if len(after) >= 2 and log[-1][0] - warm > 0:
        return sum(n for _t, n in after) / (log[-1][0] - warm), warm
    span = log[-1][0] - log[0][0]
    rest = sum(n for _t, n, _c in log[1:])
    return (rest / span if span > 0 and rest else 0.0), log[0][0]


def bottleneck(workers: Sequence[dict[str, Any]]) -> str:
    """Name what limits throughput: producers starving consumers, or consumers holding up producers."""
    cons = [w for w in workers if w["role"] == "consumer"]
    prods = [w for w in workers if w["role"] == "producer"]
    if not cons or not prods:
        return "unknown"

    def frac(ws: list[dict[str, Any]], stage: str) -> float:
        """Share of the workers' lifetime spent in ``stage``."""
        total = sum(w["stats"]["alive_s"] for w in ws) or 1.0
        return sum(w["stats"]["seconds"].get(stage, 0.0) for w in ws) / total

    starved = frac(cons, CONSUMER_WAIT)
    blocked = frac(prods, PRODUCER_WAIT)
    if starved > 0.10 and starved >= blocked:
        return f"producers (consumers waited {starved:.0%} of their time for batches)"
    if blocked > 0.10:
        return f"consumers (producers waited {blocked:.0%} of their time for free slots)"
    return "balanced"


# Producer stages that are preprocessing work (reading the file, decoding and resizing), not waiting.
PREPROCESS_STAGES = ("read", "decode_resize")


def time_per_image(workers: Sequence[dict[str, Any]], images: int, scan_seconds: float, cores: int) -> dict[str, float]:
    """Where a scan's time went, in milliseconds per image, from the workers' stage timers.

    Producers: ``preprocess_ms`` (read + decode + resize, all producers together) and ``preprocess_core_share``,
    the share of the machine's core-seconds that preprocessing took during the scan. Consumers (summed over
    replicas, so per replica-image): ``forward_ms`` (the model), ``transfer_ms`` (batch assembly and copies in),
    ``score_ms`` (scoring, top-k, the sink), ``wait_ms`` (no batch ready: producers behind).
    """
    if images <= 0:
        return {}

    def total(role: str, stages: Sequence[str]) -> float:
        """Seconds the workers of ``role`` spent in ``stages``."""
        return sum(w["stats"]["seconds"].get(s, 0.0) for w in workers if w["role"] == role for s in stages)

    pre = total("producer", PREPROCESS_STAGES)
    out = {
        "preprocess_ms": 1000 * pre / images,
        "preprocess_core_share": pre / (scan_seconds * cores) if scan_seconds > 0 and cores else 0.0,
        "forward_ms": 1000 * total("consumer", ("forward",)) / images,
        "transfer_ms": 1000 * total("consumer", ("transfer",)) / images,
        "score_ms": 1000 * total("consumer", ("score",)) / images,
        "wait_ms": 1000 * total("consumer", (CONSUMER_WAIT,)) / images,
    }
    return {k: round(v, 3 if k.endswith("ms") else 4) for k, v in out.items()}
