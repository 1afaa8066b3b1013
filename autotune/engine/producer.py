"""Producer process: reads records, preprocesses them (fast path) straight into shared-memory slots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from typing import TYPE_CHECKING

from autotune.data.sources import ImageSource, Record
from autotune.engine.events import BatchTask, Done, Event, FilledSlot, Produced, Ready, Skip
from autotune.engine.lifecycle import error_event, worker_start
from autotune.engine.telemetry import PRODUCER_WAIT, StageTimer
from autotune.engine.transport import SlotLayout, SlotPool

if TYPE_CHECKING:  # the module imports torch: workers import it themselves, once their threads are set
    from autotune.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ProducerSpec:
    """Everything a producer needs, picklable."""

    index: int
    source: ImageSource
    layout: SlotLayout
    preprocess: PreprocessSpec
    cores: tuple[int, ...] | None = None
    parent_pid: int = 0


def producer_main(
    spec: ProducerSpec,
    tasks: Queue[BatchTask | None],
    free_slots: Queue[int],
    ready: list[Queue[FilledSlot | None]],
    events: Queue[Event],
    go: MpEvent,
) -> None:
    """Loop: take a task (batch of records), take a free slot, fill it, hand it to the target queue."""
    worker_start(spec.parent_pid)
    os.environ["OMP_NUM_THREADS"] = "1"
    if spec.cores:
        os.sched_setaffinity(0, spec.cores)
    pool: SlotPool | None = None
    try:
        import torch

        from autotune.errors import BadImageError
        from autotune.preprocess import fast_preprocess

        # The fast path resizes with a torch kernel: one thread per producer, or producers fight the models.
        torch.set_num_threads(1)

        pool = SlotPool.attach(spec.layout)
        timer = StageTimer()
        events.put(Ready("producer", spec.index, os.getpid(), {"affinity": sorted(os.sched_getaffinity(0))}))
        # Wait for every replica's model: start-up is then measured apart, and no head start skews timings.
        go.wait()
        timer = StageTimer()
        while True:
            with timer.stage("wait_task"):
                task: BatchTask | None = tasks.get()
            if task is None:
                break
            batch_no, target, records = task
            with timer.stage(PRODUCER_WAIT):
                slot = free_slots.get()
            n = 0
            skipped: list[Skip] = []
            for rid, locator in records:
                with timer.stage("read"):
                    try:
                        data = spec.source.read_bytes(Record(rid, locator, None))
                    except OSError as exc:
                        skipped.append(Skip(rid, locator, "unreadable", str(exc)[:200]))
                        continue
                with timer.stage("decode_resize"):
                    try:
                        fast_preprocess(data, spec.preprocess, out=pool.pixels[slot, n])
                    except BadImageError as exc:
                        skipped.append(Skip(rid, locator, exc.reason, exc.detail[:200]))
                        continue
                pool.ids[slot, n] = rid
                n += 1
            timer.count("images", n)
            timer.count("batches")
            timer.count("skipped", len(skipped))
            if n:
                ready[target].put(FilledSlot(slot, n, batch_no))
            else:
                free_slots.put(slot)
            events.put(Produced(spec.index, batch_no, n, skipped))
        events.put(Done("producer", spec.index, timer.snapshot(), None))
    except Exception as exc:
        events.put(error_event("producer", spec.index, exc))
    finally:
        if pool is not None:
            pool.close()
