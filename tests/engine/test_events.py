"""Queue messages: typed, picklable between processes, and a worker's failure is one typed event."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from autotune.atomic import DiskFullError
from autotune.engine.events import BatchDone, BatchTask, Done, Failed, FilledSlot, Produced, Ready, Skip
from autotune.engine.lifecycle import error_event


@pytest.mark.parametrize(
    "message",
    [
        BatchTask(3, 1, [(7, "a.jpg"), (8, "b.jpg")]),
        FilledSlot(slot=2, images=8, batch_no=3),
        Ready("consumer", 0, 1234, {"affinity": [0, 1]}),
        Produced(0, 3, 1, [Skip(8, "b.jpg", "unreadable", "gone")]),
        Done("producer", 1, {"seconds": {"read": 0.5}}, None),
        Failed("consumer", 2, "ValueError: no", False),
    ],
    ids=lambda m: type(m).__name__,
)
def test_messages_survive_pickling(message: tuple[object, ...]) -> None:
    assert pickle.loads(pickle.dumps(message)) == message


def test_batch_done_carries_its_ids() -> None:
    ev = BatchDone(consumer=1, batch_nos=[4, 5], images=3, t_done=1.5, busy_s=0.2, ids=np.array([1, 2, 3]))
    back = pickle.loads(pickle.dumps(ev))
    assert type(back) is BatchDone and back.batch_nos == [4, 5] and back.ids.tolist() == [1, 2, 3]


def test_error_event_is_a_one_line_failed_event() -> None:
    ev = error_event("producer", 1, ValueError("first line\nsecond line"))
    assert ev == Failed("producer", 1, "ValueError: first line", False)
    full = error_event("consumer", 0, DiskFullError("no space left on the device while writing x"))
    assert full.disk_full and full.summary == "no space left on the device while writing x"
