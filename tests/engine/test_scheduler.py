"""The task feeder alone: dynamic hands out everything at once, static probes first and then splits by speed."""

from __future__ import annotations

from autotune.engine.events import BatchTask
from autotune.engine.scheduler import TaskFeeder


def _batches(n: int) -> list[list[tuple[int, str]]]:
    return [[(i, f"{i}.jpg")] for i in range(n)]


def test_dynamic_feeds_every_batch_then_one_sentinel_per_producer() -> None:
    sent: list[BatchTask | None] = []
    feeder = TaskFeeder(sent.append, _batches(5), consumers=2, producers=3, probe_batches=None)
    assert feeder.closed and not feeder.pending
    assert [t.batch_no for t in sent if t is not None] == [0, 1, 2, 3, 4]
    assert all(t.target == 0 for t in sent if t is not None)
    assert sent[-3:] == [None, None, None]


def test_static_probes_then_splits_by_measured_speed() -> None:
    sent: list[BatchTask | None] = []
    feeder = TaskFeeder(sent.append, _batches(14), consumers=2, producers=1, probe_batches=2)
    probes = [t for t in sent if t is not None]
    assert [t.batch_no for t in probes] == [0, 1, 2, 3] and sorted(t.target for t in probes) == [0, 0, 1, 1]
    assert feeder.pending == {0, 1, 2, 3} and not feeder.closed
    feeder.step()
    assert not feeder.closed  # probes still out
    by_target = {t.batch_no: t.target for t in probes}
    for b in (0, 1, 2, 3):
        # Replica 0 is three times as fast per image as replica 1.
        busy = 0.1 if by_target[b] == 0 else 0.3
        feeder.embedded(by_target[b], [b], images=1, busy_s=busy)
    feeder.step()
    assert feeder.closed and sent[-1] is None
    rest = [t for t in sent[len(probes) :] if t is not None]
    assert [t.batch_no for t in rest] == list(range(4, 14))
    assert [t.target for t in rest].count(0) > [t.target for t in rest].count(1) * 2


def test_an_empty_probe_batch_is_not_awaited() -> None:
    sent: list[BatchTask | None] = []
    feeder = TaskFeeder(sent.append, _batches(4), consumers=2, producers=1, probe_batches=1)
    feeder.embedded(0, [0], images=1, busy_s=0.1)
    feeder.empty(1)  # every image of batch 1 was skipped
    feeder.step()
    assert feeder.closed and [t.batch_no for t in sent if t is not None] == [0, 1, 2, 3]
