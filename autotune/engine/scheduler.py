"""Work planning: batches of records, the static schedule's speed-proportional split, and the task feeder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autotune.data.sources import Record
from autotune.engine.events import BatchTask


def make_batches(records: Sequence[Record], size: int) -> list[list[tuple[int, str]]]:
    """Cut records into consecutive batches of ``size`` (id, locator) pairs."""
    return [[(r.id, r.locator) for r in records[i : i + size]] for i in range(0, len(records), size)]


def weighted_order(weights: Sequence[float], count: int) -> list[int]:
    """Smooth weighted round-robin: ``count`` targets, each chosen in proportion to its weight.

    Interleaving (rather than handing each consumer one contiguous block) keeps every consumer fed from
    the start, since producers work through tasks in order.
    """
    if not weights:
        return []
    w = [max(float(x), 1e-9) for x in weights]
    total = sum(w)
    current = [0.0] * len(w)
    order = []
    for _ in range(count):
        for i, x in enumerate(w):
            current[i] += x
        best = max(range(len(w)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def static_weights(busy_per_image: Sequence[float]) -> list[float]:
    """Relative speed of each consumer from its probe: images per busy second."""
    return [1.0 / b if b > 0 else 1.0 for b in busy_per_image]


class TaskFeeder:
    """Hands batch tasks to the producers: all at once (dynamic), or probes first and then a split (static).

    Dynamic scheduling puts every task on one shared ready queue and lets replicas take what they can. Static
    scheduling gives each replica its own queue: ``probe_batches`` batches per replica are timed first, and
    the rest are split in proportion to the speed each replica showed. The feeder closes the task queue with
    one sentinel per producer once every task is out.
    """

    def __init__(
        self,
        put: Callable[[BatchTask | None], None],
        batches: list[list[tuple[int, str]]],
        consumers: int,
        producers: int,
        probe_batches: int | None,
    ) -> None:
        """``probe_batches`` None means dynamic scheduling (one shared ready queue)."""
        self._put, self._batches, self._producers = put, batches, producers
        self._remaining = list(range(len(batches)))
        self.pending: set[int] = set()  # probe batches not yet embedded (nor found empty)
        self._busy = [[0.0, 0] for _ in range(consumers)]  # per replica: busy seconds and images of its probes
        self.closed = False
        if probe_batches is None:
            self._send(self._remaining, [0] * len(self._remaining))
            self._close()
            return
        probes = weighted_order([1.0] * consumers, min(probe_batches * consumers, len(batches)))
        self._send(self._remaining[: len(probes)], probes)
        self.pending.update(self._remaining[: len(probes)])
        self._remaining = self._remaining[len(probes) :]

    def embedded(self, consumer: int, batch_nos: Sequence[int], images: int, busy_s: float) -> None:
        """Credit a replica's finished batch to its probe figures (only batches still being probed count)."""
        for b in batch_nos:
            if b in self.pending:
                self.pending.discard(b)
                self._busy[consumer][0] += busy_s
                self._busy[consumer][1] += images

    def empty(self, batch_no: int) -> None:
        """A batch whose every image was skipped never reaches a replica: it is no longer awaited."""
        self.pending.discard(batch_no)

    def step(self) -> None:
        """Once every probe is back, split the remaining batches by measured speed and close the queue."""
        if self.closed or self.pending:
            return
        weights = static_weights([busy / n if n else 0.0 for busy, n in self._busy])
        self._send(self._remaining, weighted_order(weights, len(self._remaining)))
        self._remaining = []
        self._close()

    def _send(self, batch_nos: Sequence[int], targets: Sequence[int]) -> None:
        """Put one task per batch, for its target replica's queue."""
        for b, target in zip(batch_nos, targets, strict=True):
            self._put(BatchTask(b, target, self._batches[b]))

    def _close(self) -> None:
        """One sentinel per producer: each stops after taking its own."""
        for _ in range(self._producers):
            self._put(None)
        self.closed = True
