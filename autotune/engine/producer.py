"""Producer process: reads records, preprocesses them (fast path) straight into shared-memory slots."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from typing import TYPE_CHECKING

import numpy as np

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
    decode: str = "cpu"  # "gpu": plain JPEGs travel encoded, for the replica to decode in batches


def _ship_encoded(spec: ProducerSpec, data: bytes, decodable: Callable[[bytes], bool]) -> bool:
    """Whether an image travels encoded (``decode: gpu``, a plain JPEG that fits its slot) or as pixels.

    Anything else (PNG, CMYK, a JPEG larger than the slot's encoded room, a header that does not parse) is
    decoded here on the CPU path, with that path's skip reasons. A decompression bomb raises here.
    """
    room = spec.layout.encoded_bytes
    return spec.decode == "gpu" and 0 < len(data) <= room and decodable(data)


def producer_main(
    spec: ProducerSpec,
    tasks: Queue[BatchTask | None],
    free_slots: Queue[int],
    ready: list[Queue[FilledSlot | None]],
    events: Queue[Event],
    go: MpEvent,
) -> None:
    """Loop: take a task (batch of records), take a free slot, fill it, hand it to the target queue."""
    worker_start()
    os.environ["OMP_NUM_THREADS"] = "1"
    if spec.cores:
        os.sched_setaffinity(0, spec.cores)
    pool: SlotPool | None = None
    try:
        import torch

        from autotune.errors import BadImageError
        from autotune.preprocess import fast_preprocess
        from autotune.preprocess.decoders import gpu_decodable

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
                try:
                    if _ship_encoded(spec, data, gpu_decodable):
                        # The replica decodes it: the producer only copies the bytes (and checked the header).
                        with timer.stage("copy_encoded"):
                            pool.encoded[slot, n, : len(data)] = np.frombuffer(data, np.uint8)
                            pool.lengths[slot, n] = len(data)
                    else:
                        with timer.stage("decode_resize"):
                            fast_preprocess(data, spec.preprocess, out=pool.pixels[slot, n])
                            pool.lengths[slot, n] = 0
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
