"""Work planning: batches of records, and the static schedule's speed-proportional split."""

from __future__ import annotations

from collections.abc import Sequence

from autotune.data.sources import Record

Task = tuple[int, int, list[tuple[int, str]]]  # (batch_no, target queue, [(id, locator), ...])


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
