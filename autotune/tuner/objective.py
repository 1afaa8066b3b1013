"""One trial's measurement: the engine's steady state over timed batch rounds, in a process of its own."""

from __future__ import annotations

import atexit
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.engine.transport import own_semaphores, release_semaphores, remove_segments
from autotune.errors import AutotuneError
from autotune.tuner.scan_spec import ScanSpec
from autotune.tuner.trial_process import trial_process_main

# How long a trial told to stop may take to wind down before it is killed (read at each call, so tests can
# shorten it).
STOP_GRACE_S = 15.0
TERM_GRACE_S = 3.0  # after the grace: seconds a child told to stop by SIGTERM has to unwind before SIGKILL


@dataclass
class Measurement:
    """What one measured scan gives a trial: the timed window's images/s and the engine's telemetry.

    ``round_images_per_s[k]`` is the rate over the window from the end of warm-up to the end of timed round
    ``k + 1`` (what the pruner sees); the objective is the last one, the whole window.
    """

    round_images_per_s: list[float]
    startup_s: float
    warmup_s: float
    window_s: float
    drain_s: float
    timed_images: int
    reused_images: int
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
        """The objective: steady-state images/s of the whole engine over the timed window."""
        return self.round_images_per_s[-1] if self.round_images_per_s else 0.0

    @property
    def overhead_s(self) -> float:
        """Seconds the scan took beyond its images at the steady rate: the warm-up and drain rounds' cost.

        A run of ``n`` images then takes about ``n / images_per_s + overhead_s`` after start-up, which is what
        a prediction for a database of a given size uses (at 500,000 images the overhead is noise; at 2,000
        it is not).
        """
        rate = self.images_per_s
        if rate <= 0:
            return 0.0
        return max(self.warmup_s + self.window_s + self.drain_s - self.images / rate, 0.0)

    def attrs(self) -> dict[str, Any]:
        """Flat user attributes for the Optuna trial."""
        data = asdict(self)
        data["images_per_s"] = self.images_per_s
        data["overhead_s"] = round(self.overhead_s, 4)
        return data


class TrialFailed(AutotuneError):
    """The trial's scan crashed, ran out of memory or timed out; the study records it and goes on."""


class TrialStopped(Exception):
    """The trial was stopped on request (pruned) after reporting some rounds."""


class _TrialRunner:
    """The parent's handle on the trial process: started on first use, kept while trials end cleanly."""

    def __init__(self) -> None:
        """Start the process (spawned: the study's own process may hold threads and a torch thread pool)."""
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(target=trial_process_main, args=(child_conn,), name="trial", daemon=False)
        self.proc.start()
        child_conn.close()

    def close(self, watch: _Watch | None = None) -> None:
        """End the process (killing it if it will not end) and remove the shared memory it may have left."""
        # Ask it to end: an idle process (between trials, or after reporting an error) ends at once, a busy one
        # once its scan has stopped (a stop, when one was sent, is ahead of this in the pipe).
        try:
            self.conn.send(None)
        except OSError:
            pass
        # A child that let its grace period pass without stopping gets no second one: it is killed now.
        busy = watch is not None and watch.stop_reason is None
        self.proc.join(timeout=0.0 if watch is not None and watch.grace_spent else STOP_GRACE_S if busy else 5.0)
        semaphores: set[str] = set()
        if self.proc.is_alive() and self.proc.pid is not None:
            # SIGTERM first: the child unwinds its scan (workers stopped, everything it created released),
            # unless it is stuck outside Python; then SIGKILL, and its semaphores are released here.
            semaphores = own_semaphores(self.proc.pid)
            self.proc.terminate()
            self.proc.join(TERM_GRACE_S)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5.0)
        self.conn.close()
        if self.proc.exitcode is not None and self.proc.pid is not None:
            # A child killed mid-scan never unlinked its shared memory and semaphores, and the study goes on
            # for hours: remove them now (its workers died with it, so nothing maps them any more).
            remove_segments(self.proc.pid)
            release_semaphores(semaphores)


_RUNNER: _TrialRunner | None = None


def _runner() -> _TrialRunner:
    """The trial process, started now if there is none (or the last one has died)."""
    global _RUNNER
    if _RUNNER is not None and not _RUNNER.proc.is_alive():
        _retire()
    if _RUNNER is None:
        _RUNNER = _TrialRunner()
    return _RUNNER


def close_trial_process() -> None:
    """End the process that measures trials, kept between them; the next :func:`measure` starts a new one.

    A study calls it when its last measurement is done; it also runs at exit.
    """
    _retire()


def _retire(watch: _Watch | None = None) -> None:
    """End the trial process, if any (``watch``: the trial it did not end cleanly, which sets how long to wait)."""
    global _RUNNER
    if _RUNNER is not None:
        _RUNNER.close(watch)
        _RUNNER = None


atexit.register(close_trial_process)


@dataclass
class _Watch:
    """The parent's view of one running trial: the rounds it reported, and whether (and when) it was stopped."""

    deadline: float
    rounds: list[float] = field(default_factory=list)
    stop_reason: str | None = None  # pruned | timeout | interrupted
    stop_sent_at: float | None = None
    grace_spent: bool = False
    acknowledged: bool = False  # the child answered a stop with "stopped": its scan ended cleanly

    def stop(self, conn: Connection, reason: str) -> None:
        """Ask the child to stop (its scan ends at its next batch); a child already gone cannot be asked."""
        self.stop_reason = self.stop_reason or reason
        try:
            conn.send("stop")
        except OSError:
            pass
        self.stop_sent_at = time.monotonic()

    def tick(self, conn: Connection) -> bool:
        """Stop a trial past its deadline; True once a stopped child has let its grace period pass."""
        now = time.monotonic()
        if self.stop_reason is None and now > self.deadline:
            self.stop(conn, "timeout")
        if self.stop_sent_at is not None and now - self.stop_sent_at > STOP_GRACE_S:
            self.grace_spent = True
        return self.grace_spent


def _follow(
    conn: Connection, proc: BaseProcess, watch: _Watch, on_round: Callable[[int, float], bool] | None
) -> Measurement | None:
    """Read the child's messages until its figures (returned), or until it stops, exits or overruns (None)."""
    while True:
        if conn.poll(0.2):
            try:
                msg = conn.recv()
            except EOFError:
                return None
            kind = msg[0]
            if kind == "round":
                watch.rounds.append(float(msg[2]))
                if on_round is not None and watch.stop_reason is None and on_round(int(msg[1]), float(msg[2])):
                    watch.stop(conn, "pruned")
            elif kind == "result":
                if not watch.rounds:
                    raise TrialFailed("no timed round completed: the scan is too short for this configuration")
                return Measurement(round_images_per_s=watch.rounds, **msg[1])
            elif kind == "stopped":
                watch.acknowledged = True
                return None
            elif kind == "error":
                raise TrialFailed(str(msg[1]))
        elif not proc.is_alive():
            return None
        if watch.tick(conn):
            return None


def _no_result(watch: _Watch, code: int | None, spec: ScanSpec) -> Exception:
    """Why a trial ended without figures: stopped on request, interrupted, timed out, killed or crashed."""
    if watch.stop_reason == "pruned":
        return TrialStopped(watch.rounds)
    if watch.stop_reason == "interrupted":  # pragma: no cover - the KeyboardInterrupt is already propagating
        return TrialFailed("interrupted")
    if watch.stop_reason == "timeout":
        return TrialFailed(f"timeout: the scan took longer than {spec.timeout_s:g} s")
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in {s.value for s in signal.Signals} else str(-code)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return TrialFailed(f"the scan process was killed by {name}{hint}")
    return TrialFailed(f"the scan process exited with code {code} before reporting")


def measure(
    config: EngineConfig,
    spec: ScanSpec,
    on_round: Callable[[int, float], bool] | None = None,
) -> Measurement:
    """Run one timed scan in the trial process; ``on_round(k, images_per_s)`` returning True stops it early.

    The trial process (spawned on first use) is kept for the next call while trials end cleanly, so its
    engine's fork server imports torch once for them all; :func:`close_trial_process` ends it.

    Raises :class:`TrialStopped` when stopped through ``on_round``, :class:`TrialFailed` when the scan
    crashes, runs out of memory or exceeds ``spec.timeout_s``.

    Example:
        >>> m = measure(EngineConfig(cpu_batch=16), ScanSpec(dataset="data/", model="fake:32"))
        >>> m.images_per_s, m.bottleneck
    """
    runner = _runner()
    runner.conn.send(("trial", config.to_dict(), spec))
    watch = _Watch(deadline=time.monotonic() + spec.timeout_s)
    result: Measurement | None = None
    try:
        result = _follow(runner.conn, runner.proc, watch, on_round)
    except BaseException:
        # Ctrl-C or an error here: ask the scan to stop cleanly, then wait only briefly.
        watch.stop(runner.conn, "interrupted")
        raise
    finally:
        # The process is kept for the next trial only after a clean end: figures with no stop sent, or a
        # pruning stop it answered. After anything else its state is unknown: it goes, with its workers.
        clean = (result is not None and watch.stop_sent_at is None) or (
            watch.acknowledged and watch.stop_reason == "pruned"
        )
        if not clean:
            _retire(watch)
    if result is not None:
        return result
    raise _no_result(watch, runner.proc.exitcode, spec)

