"""One trial's measurement: a fixed timed scan in a fresh process, reported shard by shard."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.engine.transport import remove_segments
from autotune.errors import AutotuneError

# How long a trial told to stop may take to wind down before it is killed (read at each call, so tests can
# shorten it).
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class ScanSpec:
    """The fixed workload every trial measures: the same images, the same model, the same shards."""

    dataset: str
    model: str
    scan_size: int = 96
    warmup: int = 16
    shards: int = 3
    timeout_s: float = 600.0
    image_column: str | None = None
    split: str | None = None
    fake_delay_s: float = 0.0  # seconds slept per image by ``fake:`` models (tests of slow trials); else unused

    @property
    def shard_size(self) -> int:
        """Images per measured shard."""
        return max(1, self.scan_size // self.shards)

    def too_small_for(self, config: EngineConfig) -> str | None:
        """Why this workload cannot time ``config`` fairly, or None.

        A shard must span at least one batch on every replica; otherwise batches that ran in parallel are
        timed as if they ran one after another.
        """
        need = config.unit_batch() * max(config.consumers, 1)
        if self.shard_size < need:
            return (f"a shard of {self.shard_size} images is smaller than one batch round "
                    f"({config.unit_batch()} x {config.consumers} replicas): raise --scan-size to "
                    f"{need * self.shards} or more")
        return None


@dataclass
class Measurement:
    """What one measured scan gives a trial: per-shard images/s and the engine's telemetry."""

    shard_images_per_s: list[float]
    startup_s: float
    steady_images_per_s: float
    bottleneck: str
    stage_seconds: dict[str, dict[str, float]]
    peak_rss_mb: float
    threads: list[Any]
    affinity: list[Any]
    skipped: int
    images: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """The objective: median of the shard throughputs."""
        return statistics.median(self.shard_images_per_s) if self.shard_images_per_s else 0.0

    def attrs(self) -> dict[str, Any]:
        """Flat user attributes for the Optuna trial."""
        data = asdict(self)
        data["images_per_s"] = self.images_per_s
        return data


class TrialFailed(AutotuneError):
    """The trial's scan crashed, ran out of memory or timed out; the study records it and goes on."""


class TrialStopped(Exception):
    """The trial was stopped on request (pruned) after reporting some shards."""


class _Stop(Exception):
    """Raised inside the child's scan callback to end the scan cleanly."""


def _shard_tracker(spec: ScanSpec, send: Callable[[tuple[Any, ...]], None], conn: Any) -> Callable[[Any], None]:
    """An on_batch callback that turns completed batches into shard throughputs, and obeys 'stop'."""
    state: dict[str, Any] = {"next": 0, "t_start": None, "n_start": 0}
    bounds = [spec.warmup + (k + 1) * spec.shard_size for k in range(spec.shards)]

    def on_batch(progress: Any) -> None:
        if conn.poll():
            if conn.recv() == "stop":
                raise _Stop
        done = progress.images
        now = progress.elapsed_s
        if state["t_start"] is None and done >= spec.warmup:
            state["t_start"], state["n_start"] = now, done
            return
        # One batch may close several shards (batch larger than a shard): they all get that window's rate.
        crossed = 0
        while (
            state["t_start"] is not None
            and state["next"] + crossed < spec.shards
            and done >= bounds[state["next"] + crossed]
        ):
            crossed += 1
        if crossed:
            dt = now - state["t_start"]
            rate = (done - state["n_start"]) / dt if dt > 0 else 0.0
            for _ in range(crossed):
                send(("shard", state["next"], rate))
                state["next"] += 1
            state["t_start"], state["n_start"] = now, done

    return on_batch


def _trial_child(conn: Any, config: dict[str, Any], spec: ScanSpec) -> None:
    """Child process: run the engine once on the fixed workload and send back its figures."""
    from autotune.engine.lifecycle import one_line, worker_start

    worker_start(os.getppid())
    try:
        from autotune.data import open_source
        from autotune.engine.runner import run_scan

        source = open_source(spec.dataset, spec.image_column, spec.split)
        records = source.records()[: spec.warmup + spec.scan_size]
        cfg = EngineConfig.from_dict(config)
        result = run_scan(
            source,
            spec.model,
            cfg,
            records=records,
            on_batch=_shard_tracker(spec, conn.send, conn),
            fake_delay_s=spec.fake_delay_s,
        )
        stages: dict[str, dict[str, float]] = {}
        for w in result.workers:
            agg = stages.setdefault(w["role"], {})
            for k, v in w["stats"]["seconds"].items():
                agg[k] = round(agg.get(k, 0.0) + v, 4)
        rss_kb = max(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        conn.send(
            (
                "result",
                {
                    "startup_s": result.startup_s,
                    "steady_images_per_s": result.steady_images_per_s,
                    "bottleneck": result.bottleneck,
                    "stage_seconds": stages,
                    "peak_rss_mb": round(rss_kb / 1024, 1),
                    "threads": [w["stats"].get("torch_threads") for w in result.workers if w["role"] == "consumer"],
                    "affinity": [w.get("affinity") for w in result.workers],
                    "skipped": len(result.skipped),
                    "images": result.images,
                    "extra": {
                        "backend_setup": [
                            {k: w["stats"].get(k) for k in ("backend", "setup_seconds", "cache_hit")}
                            for w in result.workers
                            if w["role"] == "consumer"
                        ]
                    },
                },
            )
        )
    except _Stop:
        conn.send(("stopped", None))
    except MemoryError:
        conn.send(("error", "out of memory"))
    except Exception as exc:  # the parent turns this into a FAIL trial with the reason
        conn.send(("error", f"{type(exc).__name__}: {one_line(str(exc))}"))
    finally:
        conn.close()


def measure(
    config: EngineConfig,
    spec: ScanSpec,
    on_shard: Callable[[int, float], bool] | None = None,
) -> Measurement:
    """Run one timed scan in a fresh process; ``on_shard(k, images_per_s)`` returning True stops it early.

    Raises :class:`TrialStopped` when stopped through ``on_shard``, :class:`TrialFailed` when the scan
    crashes, runs out of memory or exceeds ``spec.timeout_s``.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_trial_child, args=(child_conn, config.to_dict(), spec), name="trial", daemon=False)
    proc.start()
    child_conn.close()
    shards: list[float] = []
    deadline = time.monotonic() + spec.timeout_s
    stop_reason: str | None = None
    stop_sent_at: float | None = None
    grace_spent = False
    try:
        while True:
            if parent_conn.poll(0.2):
                try:
                    msg = parent_conn.recv()
                except EOFError:
                    msg = None
                if msg is None:
                    break
                kind = msg[0]
                if kind == "shard":
                    shards.append(float(msg[2]))
                    if on_shard is not None and stop_reason is None and on_shard(int(msg[1]), float(msg[2])):
                        stop_reason = "pruned"
                        parent_conn.send("stop")
                        stop_sent_at = time.monotonic()
                elif kind == "result":
                    if not shards:
                        raise TrialFailed("no timed shard completed: the scan is too short for this configuration")
                    return Measurement(shard_images_per_s=shards, **msg[1])
                elif kind == "stopped":
                    break
                elif kind == "error":
                    raise TrialFailed(str(msg[1]))
            elif not proc.is_alive():
                break
            now = time.monotonic()
            if stop_reason is None and now > deadline:
                stop_reason = "timeout"
                try:
                    parent_conn.send("stop")
                except OSError:
                    pass
                stop_sent_at = now
            if stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_S:
                grace_spent = True
                break
    except BaseException:
        # Ctrl-C or an error here: ask the scan to stop cleanly, then wait only briefly.
        stop_reason = stop_reason or "interrupted"
        try:
            parent_conn.send("stop")
        except OSError:
            pass
        raise
    finally:
        # A child that let its grace period pass without stopping gets no second one: it is killed now.
        proc.join(timeout=0.0 if grace_spent else STOP_GRACE_S if stop_reason is None else 5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        parent_conn.close()
        if proc.exitcode is not None and proc.pid is not None:
            # A child killed mid-scan never unlinked its shared memory, and the study goes on for hours:
            # remove it now (its workers died with it, so nothing maps the segments any more).
            remove_segments(proc.pid)
    if stop_reason == "pruned":
        raise TrialStopped(shards)
    if stop_reason == "interrupted":  # pragma: no cover - the KeyboardInterrupt is already propagating
        raise TrialFailed("interrupted")
    if stop_reason == "timeout":
        raise TrialFailed(f"timeout: the scan took longer than {spec.timeout_s:g} s")
    code = proc.exitcode
    if code is not None and code < 0:
        import signal as _signal

        name = _signal.Signals(-code).name if -code in {s.value for s in _signal.Signals} else str(-code)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        raise TrialFailed(f"the scan process was killed by {name}{hint}")
    raise TrialFailed(f"the scan process exited with code {code} before reporting")
