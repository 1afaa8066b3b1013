"""What travels through the engine's queues: typed messages instead of positional tuples.

Each message is a ``NamedTuple`` defined at module top level, so it pickles by reference between processes
and costs no more than the tuple it replaces. Workers send :data:`Event` values to the parent on one events
queue; the parent sends :class:`BatchTask` values to producers, and producers send :class:`FilledSlot`
values to consumers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class BatchTask(NamedTuple):
    """A batch of records for a producer to read and preprocess, and which consumer queue it feeds."""

    batch_no: int
    target: int
    records: list[tuple[int, str]]  # (id, locator)


class FilledSlot(NamedTuple):
    """A shared-memory slot a producer filled: ``images`` rows of batch ``batch_no``."""

    slot: int
    images: int
    batch_no: int


class Skip(NamedTuple):
    """A record a producer could not read or decode, and why."""

    id: int
    locator: str
    reason: str
    detail: str


class Ready(NamedTuple):
    """A worker has started (a consumer: loaded its model); ``info`` holds its threads and affinity."""

    role: str
    worker: int  # its index among the workers of its role
    pid: int
    info: dict[str, Any]


class Produced(NamedTuple):
    """A producer finished one task: ``images`` rows went to a consumer, ``skips`` were left out."""

    producer: int
    batch_no: int
    images: int
    skips: list[Skip]


class BatchDone(NamedTuple):
    """A consumer embedded and scored one (possibly coalesced) batch.

    The ids travel with the event so the parent can check that no record is embedded twice.
    """

    consumer: int
    batch_nos: list[int]
    images: int
    t_done: float  # time.perf_counter() in the consumer; the parent's clock is the same on one machine
    busy_s: float
    ids: np.ndarray
    skips: list[Skip] = []  # images the replica itself could not decode (decode: gpu); locators filled by the parent


class Done(NamedTuple):
    """A worker finished: its stage timings, and a consumer's local top-k (scores, ids)."""

    role: str
    worker: int  # its index among the workers of its role
    stats: dict[str, Any]
    topk: tuple[np.ndarray, np.ndarray] | None


class Failed(NamedTuple):
    """A worker failed: a one-line summary, and whether the cause was a full disk (the user's to fix)."""

    role: str
    worker: int  # its index among the workers of its role
    summary: str
    disk_full: bool


Event = Ready | Produced | BatchDone | Done | Failed
