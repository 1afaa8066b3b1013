"""The trial process's side of a measurement: run the engine on a trial's workload, time its rounds, report.

The process (started by :func:`autotune.tuner.objective.measure`) measures trial after trial: each is sent as
("trial", config, spec); it answers ("round", k, images/s) per timed round, then ("result", figures),
("stopped", None) when asked to stop, or ("error", reason). None ends it.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from autotune.data import open_source
from autotune.data.sources import Record
from autotune.engine.config import EngineConfig
from autotune.engine.lifecycle import terminate_as_interrupt, worker_start
from autotune.engine.result import ScanProgress, ScanResult
from autotune.engine.runner import run_scan
from autotune.errors import one_line

if TYPE_CHECKING:  # objective imports this module to start the process
    from autotune.tuner.scan_spec import ScanSpec

# What the process sends: ("round", k, images/s), ("result", figures), ("stopped", None) or ("error", reason).
_Message = tuple[Any, ...]


class _Stop(Exception):
    """Raised inside the child's scan callback to end the scan cleanly."""


class _RoundTracker:
    """An on_batch callback that times the window of the timed rounds after warm-up, and obeys 'stop'."""

    def __init__(
        self, spec: ScanSpec, config: EngineConfig, send: Callable[[_Message], None], conn: Connection
    ) -> None:
        """Report each timed round through ``send``; read a 'stop' request from ``conn``."""
        self.spec, self.send, self.conn = spec, send, conn
        self.round = spec.round_images(config)
        self.rounds = spec.timed_rounds(config)
        self.consumers = config.consumers
        self.batches: dict[int, int] = {}
        self.t_a: float | None = None
        self.n_a = 0
        self.done_rounds = 0
        self.window: tuple[float, float, int] | None = None  # (start, end, images) of the timed window

    def __call__(self, progress: ScanProgress) -> None:
        """Count one finished batch; start the clock after warm-up; report each timed round's rate."""
        if self.conn.poll() and self.conn.recv() == "stop":
            raise _Stop
        t, _n, consumer = progress.batch_log[-1]
        self.batches[consumer] = self.batches.get(consumer, 0) + 1
        if self.t_a is None:
            warm = len(self.batches) >= self.consumers
            if warm and min(self.batches.values()) >= self.spec.warmup_rounds:
                self.t_a, self.n_a = t, progress.images
            return
        done = progress.images - self.n_a
        while self.done_rounds < self.rounds and done >= (self.done_rounds + 1) * self.round:
            self.done_rounds += 1
            rate = done / (t - self.t_a) if t > self.t_a else 0.0
            self.window = (self.t_a, t, done)
            self.send(("round", self.done_rounds - 1, rate))


def _stage_seconds(result: ScanResult) -> dict[str, dict[str, float]]:
    """Seconds per stage, summed over the workers of each role."""
    stages: dict[str, dict[str, float]] = {}
    for w in result.workers:
        agg = stages.setdefault(w["role"], {})
        for k, v in w["stats"]["seconds"].items():
            agg[k] = round(agg.get(k, 0.0) + v, 4)
    return stages


_SETUP_KEYS = ("backend", "setup_seconds", "cache_hit")


def _figures(result: ScanResult, window: tuple[float, float, int] | None, reused: int) -> dict[str, Any]:
    """The fields of a :class:`Measurement` (all but the round rates) from one scan and its timed window."""
    t_a, t_b, timed = window or (result.startup_s, result.startup_s, 0)
    # The largest process of the trial: a worker (each reports its own peak; those forked from the fork server
    # are not this process's children, and this process's children's figure would span every trial it ran) or
    # this process itself.
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_peak_mb = max((float(w["stats"].get("peak_rss_mb") or 0.0) for w in result.workers), default=0.0)
    consumers = [w for w in result.workers if w["role"] == "consumer"]
    return {
        "startup_s": result.startup_s,
        # batch_log times count from the scan's start; warm-up and drain exclude start-up.
        "warmup_s": round(max(t_a - result.startup_s, 0.0), 4),
        "window_s": round(t_b - t_a, 4),
        "drain_s": round(max(result.seconds - t_b, 0.0), 4),
        "timed_images": timed,
        "reused_images": reused,
        "steady_images_per_s": result.steady_images_per_s,
        "bottleneck": result.bottleneck,
        "stage_seconds": _stage_seconds(result),
        "peak_rss_mb": round(max(rss_kb / 1024, worker_peak_mb), 1),
        "threads": [w["stats"].get("torch_threads") for w in consumers],
        "affinity": [w.get("affinity") for w in result.workers],
        "skipped": len(result.skipped),
        "images": result.images,
        "extra": {"backend_setup": [{k: w["stats"].get(k) for k in _SETUP_KEYS} for w in consumers]},
    }


def trial_process_main(conn: Connection) -> None:
    """The trial process: measure each trial it is sent, one after another, until told to end.

    It lives across trials so that its engine's fork server (torch imported once) serves them all; a trial
    that ends any other way than with its figures, or stopped on request, ends the process with it.
    """
    worker_start()
    # SIGTERM sent to the study's whole process group (`timeout`, a batch system, systemd) reaches this process
    # too: it unwinds the scan as the study does (workers stopped, shared memory and semaphores released)
    # instead of dying with its engine's semaphores left for the resource tracker to report as leaked.
    terminate_as_interrupt()
    trials = 0
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg is None:
                return
            if msg != "stop":  # a stop that crossed its trial's figures is past: only trials are measured
                trials += 1
                _trial(conn, msg[1], msg[2], trials)
    except KeyboardInterrupt:  # only SIGTERM raises it here (worker_start ignores Ctrl-C): the study reports it
        return


def _trial(conn: Connection, config: dict[str, Any], spec: ScanSpec, nth: int = 1) -> None:
    """Run the engine once on the fixed workload and send back its figures (or why there are none).

    ``nth``: the how-manieth trial of this process; the first one's start-up includes starting the engine's
    fork server (torch's import), the later ones' do not.
    """
    try:
        source = open_source(spec.dataset, spec.image_column, spec.split)
        cfg = EngineConfig.from_dict(config)
        records, reused = trial_records(source.records(), spec.offset, spec.images_for(cfg))
        tracker = _RoundTracker(spec, cfg, conn.send, conn)
        result = run_scan(source, spec.model, cfg, records=records, on_batch=tracker, fake_delay_s=spec.fake_delay_s)
        figures = _figures(result, tracker.window, reused)
        figures["extra"]["trial_in_process"] = nth
        conn.send(("result", figures))
    except _Stop:
        conn.send(("stopped", None))
    except MemoryError:
        conn.send(("error", "out of memory"))
    except Exception as exc:  # the parent turns this into a FAIL trial with the reason
        conn.send(("error", f"{type(exc).__name__}: {one_line(str(exc))}"))


def trial_records(records: list[Record], offset: int, need: int) -> tuple[list[Record], int]:
    """The ``need`` records a trial scans from ``offset`` on, reused in order under new ids if too few.

    Returns (records, how many are reuses). An offset past the end starts again at the first image.
    """
    pool = records[offset:] or records
    if len(pool) >= need:
        return list(pool[:need]), 0
    out = [Record(i, pool[i % len(pool)].locator, pool[i % len(pool)].label) for i in range(need)]
    return out, need - len(pool)
