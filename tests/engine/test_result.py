"""The parent's books of a scan: every record accounted for once, events added up into the result."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.engine import EngineConfig, ScanMismatch
from autotune.engine.events import BatchDone, Done, Produced, Ready, Skip
from autotune.engine.result import ScanBooks, check_accounting


def test_bookkeeping_counts_every_record_once() -> None:
    check_accounting([0, 1, 2, 3], [np.array([0, 2]), np.array([3])], [1])  # balanced: no error
    lost = "^scan bookkeeping mismatch: 2 images embedded [+] 1 skipped != 4 requested$"
    with pytest.raises(ScanMismatch, match=lost):
        check_accounting([0, 1, 2, 3], [np.array([0, 2])], [1])  # record 3 lost between producer and consumer
    with pytest.raises(ScanMismatch, match="not the ids requested"):
        check_accounting([0, 1, 2], [np.array([0, 1, 7])], [])  # an id nobody asked for


def test_books_add_events_up_into_the_result() -> None:
    books = ScanBooks(start=100.0)
    books.ready(Ready("consumer", 0, 11, {"affinity": [0]}))
    books.ready(Ready("producer", 0, 12, {"affinity": [1]}))
    books.produced(Produced(0, 0, 2, [Skip(2, "c.jpg", "truncated", "cut short")]))
    books.batch(BatchDone(0, [0], 2, 101.0, 0.5, np.array([0, 1])))
    books.batch(BatchDone(0, [1], 1, 102.0, 0.25, np.array([3])))
    assert books.accounted == 4 and books.batch_log == [(1.0, 2, 0), (2.0, 1, 0)]
    scores = np.array([[0.9, 0.5]], np.float32)
    books.finished(Done("consumer", 0, {"seconds": {}, "counts": {}, "alive_s": 1.0}, (scores, np.array([[3, 0]]))))
    books.finished(Done("producer", 0, {"seconds": {}, "counts": {}, "alive_s": 1.0}, None))
    assert books.is_done("consumer", 0) and books.is_done("producer", 0) and not books.is_done("consumer", 1)

    res = books.result(EngineConfig(), [0, 1, 2, 3], queries=1, top_k=2, t_go=100.5, end=103.0)
    assert res.images == 3 and res.total_records == 4
    assert res.skipped == [{"id": 2, "locator": "c.jpg", "reason": "truncated", "detail": "cut short"}]
    assert res.seconds == pytest.approx(3.0) and res.startup_s == pytest.approx(0.5)
    assert res.images_per_s == pytest.approx(3 / 2.5)
    assert res.hits(0) == [(3, pytest.approx(0.9)), (0, pytest.approx(0.5))]
    assert [(w["role"], w["pid"], w["affinity"]) for w in res.workers] == [("consumer", 11, [0]), ("producer", 12, [1])]


def test_books_refuse_a_record_embedded_twice() -> None:
    books = ScanBooks(start=0.0)
    books.batch(BatchDone(0, [0], 2, 1.0, 0.1, np.array([5, 5])))
    with pytest.raises(ScanMismatch, match="record id 5 was embedded 2 times"):
        books.result(EngineConfig(), [5, 6], queries=0, top_k=1, t_go=None, end=2.0)
