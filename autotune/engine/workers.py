"""The scan's worker processes: replicas and producers, their queues, liveness and shutdown."""

from __future__ import annotations

import math
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.data.sources import ImageSource
from autotune.engine.config import EngineConfig, gpu_count
from autotune.engine.consumer import ConsumerSpec, EmbeddingSink, consumer_main
from autotune.engine.events import BatchTask, Event, FilledSlot
from autotune.engine.lifecycle import run_in_environment, worker_context
from autotune.engine.producer import ProducerSpec, producer_main
from autotune.engine.result import ScanBooks
from autotune.engine.transport import SlotPool, own_semaphores, release_semaphores
from autotune.errors import AutotuneError
from autotune.models.backends import BackendSpec

if TYPE_CHECKING:  # the module imports torch, which the parent imports only when a model needs it
    from autotune.preprocess import PreprocessSpec

POLL_S = 0.1  # how often the parent checks that every worker is still alive
JOIN_S = 10.0  # grace period for workers to exit after their sentinel


class ScanAborted(AutotuneError):
    """A worker died or failed; the scan was stopped and every worker cleaned up."""


@dataclass(frozen=True)
class Replica:
    """One model replica to start: its device, batch size and precision."""

    device: str
    batch: int
    precision: str


# Room per image for a JPEG shipped encoded (decode: gpu): iNat's 500 px photos are 30-100 KB; a larger file is
# decoded by the producer instead, so the shared segment stays about twice the pixels' size.
ENCODED_BYTES = 256 * 1024


def replicas_for(config: EngineConfig, gpus: int | None = None) -> list[Replica]:
    """CPU replicas first, then ``gpu_models`` replicas on each of ``gpus`` GPUs (default: every visible one).

    Example:
        >>> [r.device for r in replicas_for(EngineConfig(cpu_models=1, gpu_models=2), gpus=2)]
        ['cpu', 'cuda:0', 'cuda:0', 'cuda:1', 'cuda:1']
    """
    out = [Replica("cpu", config.cpu_batch, "fp32")] * config.cpu_models
    if gpus is None:
        gpus = gpu_count() if config.gpu_models else 0
    for g in range(gpus if config.gpu_models else 0):
        out += [Replica(f"cuda:{g}", config.gpu_batch, config.gpu_precision)] * config.gpu_models
    return out


@dataclass(frozen=True)
class ScanJob:
    """What every worker of one scan shares: the images, the model, the queries and where embeddings go."""

    source: ImageSource
    model_id: str
    config: EngineConfig
    preprocess: PreprocessSpec
    queries: np.ndarray
    top_k: int
    sink_factory: Callable[[int], EmbeddingSink] | None
    fake_delay_s: float
    replicas: list[Replica]
    calibration: str | None = None  # the stored calibration set of a statically quantised CPU backend

    @property
    def static(self) -> bool:
        """Static scheduling (a ready queue per replica) only means something with several replicas."""
        return self.config.scheduling == "static" and len(self.replicas) > 1


def core_plan(config: EngineConfig) -> tuple[list[tuple[int, ...] | None], list[tuple[int, ...] | None]]:
    """Disjoint core sets for producers and CPU replicas when pinning is on (for the replicas alone with
    ``pin_replicas``)."""
    if not config.pin_cores and not config.pin_replicas:
        return [None] * config.producers, [None] * config.cpu_models

    cores = sorted(os.sched_getaffinity(0))
    if config.pin_replicas:  # the producers float over every core; the replicas take the first ones
        prod: list[tuple[int, ...] | None] = [None] * config.producers
        start = 0
    else:
        prod = [(cores[i],) for i in range(config.producers)]
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


class Workers:
    """The scan's worker processes, their queues, and the shared-memory slots that carry their batches."""

    def __init__(self, job: ScanJob) -> None:
        """Create the slot pool and the queues (no process yet); every slot starts free."""
        replicas = job.replicas
        unit = job.config.unit_batch()
        per_replica = sum(math.ceil(r.batch / unit) for r in replicas)
        self.pool = SlotPool.create(
            slots=per_replica * job.config.queue_depth + job.config.producers,
            capacity=unit,
            height=job.preprocess.crop,
            width=job.preprocess.crop,
            encoded_bytes=ENCODED_BYTES if job.config.decode == "gpu" else 0,
        )
        ctx = worker_context(fresh_runtime=job.config.omp_wait != "default")
        self.ctx = ctx
        self.tasks: Queue[BatchTask | None] = ctx.Queue()
        self.free_slots: Queue[int] = ctx.Queue()
        self.events: Queue[Event] = ctx.Queue()
        self.go: MpEvent = ctx.Event()  # producers start once every replica has loaded its model
        self.ready: list[Queue[FilledSlot | None]] = [ctx.Queue() for _ in range(len(replicas) if job.static else 1)]
        self.procs: dict[tuple[str, int], BaseProcess] = {}
        self.consumers = len(replicas)
        self.producers = job.config.producers
        for s in range(self.pool.layout.slots):
            self.free_slots.put(s)

    def start(self, job: ScanJob) -> None:
        """Start every replica (each loads its model), then every producer (they wait for ``go``)."""
        prod_cores, cons_cores = core_plan(job.config)
        for c, rep in enumerate(job.replicas):
            spec = ConsumerSpec(
                index=c,
                device=rep.device,
                backend=BackendSpec(
                    model_id=job.model_id,
                    device=rep.device,
                    precision=rep.precision,
                    backend=job.config.cpu_backend if rep.device == "cpu" else job.config.gpu_backend,
                    fake_delay_s=job.fake_delay_s,
                    batch=rep.batch,
                    calibration=job.calibration if rep.device == "cpu" else None,
                    streams=job.config.cpu_streams if rep.device == "cpu" else 1,
                ),
                layout=self.pool.layout,
                queries=job.queries,
                top_k=job.top_k,
                threads=job.config.cpu_threads if rep.device == "cpu" else 1,
                batch=rep.batch,
                cores=cons_cores[c] if rep.device == "cpu" else None,
                sink_factory=job.sink_factory,
                preprocess=job.preprocess,
                decode=job.config.decode,
                omp_wait=job.config.omp_wait,
            )
            ready = self.ready[c if job.static else 0]
            consumer_args = (spec, ready, self.free_slots, self.events)
            self._spawn(("consumer", c), f"consumer-{c}-{rep.device}", consumer_main, consumer_args)
        for i in range(job.config.producers):
            pspec = ProducerSpec(
                i, job.source, self.pool.layout, job.preprocess, prod_cores[i], job.config.decode
            )
            producer_args = (pspec, self.tasks, self.free_slots, self.ready, self.events, self.go)
            self._spawn(("producer", i), f"producer-{i}", producer_main, producer_args)

    def _spawn(self, key: tuple[str, int], name: str, target: Callable[..., None], args: tuple[object, ...]) -> None:
        """Start one daemon worker under this process's environment (a daemon is stopped by the parent's exit)."""
        env = dict(os.environ)
        p = self.ctx.Process(target=run_in_environment, args=(env, target, *args), name=name, daemon=True)
        p.start()
        self.procs[key] = p

    def next_event(self, books: ScanBooks) -> Event | None:
        """The next event, or None after a quiet poll; raise :class:`ScanAborted` when a worker has died."""
        try:
            return self.events.get(timeout=POLL_S)
        except queue.Empty:
            for key, p in self.procs.items():
                if not books.is_done(*key) and not p.is_alive():
                    why = _exit_reason(p.exitcode)
                    raise ScanAborted(f"{key[0]} {key[1]} (pid {p.pid}) {why}; scan stopped") from None
            return None

    def producers_exited(self, books: ScanBooks) -> bool:
        """Whether every producer has reported and exited (its queue feeder has then flushed every batch)."""
        return all(books.is_done("producer", i) and not self.procs[("producer", i)].is_alive()
                   for i in range(self.producers))  # fmt: skip

    def end_consumers(self) -> None:
        """One sentinel per replica, after all of its batches."""
        if len(self.ready) > 1:
            for rq in self.ready:
                rq.put(None)
        else:
            for _ in range(self.consumers):
                self.ready[0].put(None)

    def consumers_done(self, books: ScanBooks) -> bool:
        """Whether every replica has sent its final statistics."""
        return all(books.is_done("consumer", c) for c in range(self.consumers))

    def shutdown(self, graceful: bool) -> None:
        """Stop every worker (letting it exit after a finished scan, by force otherwise); release everything."""
        procs = list(self.procs.values())
        deadline = time.monotonic() + (JOIN_S if graceful else 0.0)
        for p in procs:
            if p.is_alive():
                p.join(timeout=max(deadline - time.monotonic(), 0.0))
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive() and p.pid is not None:
                # Stuck outside Python, so its SIGTERM handler never ran: release the names it opened itself.
                own = own_semaphores(p.pid)
                p.kill()
                p.join(timeout=2.0)
                release_semaphores(own)
        queues: list[Queue[Any]] = [self.tasks, self.free_slots, self.events, *self.ready]
        for q in queues:
            q.cancel_join_thread()  # never block on a feeder whose reader is gone
            q.close()
        self.pool.close()
