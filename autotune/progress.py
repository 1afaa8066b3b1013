"""How the library reports progress and news without printing: callbacks the console (or a test) supplies.

Library functions take ``progress: ProgressFactory | None`` (a bar per long task) and ``log: Log | None``
(one-line news); they never create Rich objects or write to the terminal themselves. The terminal side,
:mod:`autotune.console`, renders both; tests pass recorders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Log = Callable[[str], None]


class Task(Protocol):
    """One running task: advance it, or set its completed count, with an optional short status."""

    def advance(self, k: int = 1, info: str = "") -> None:
        """``k`` more units done."""

    def update(self, completed: int, info: str = "") -> None:
        """``completed`` units done in all."""

    def close(self) -> None:
        """The task is over (its bar stops)."""


ProgressFactory = Callable[[str, int], Task]
"""``factory(description, total)`` starts a task of ``total`` units."""


class _Silent:
    """A task that reports nowhere."""

    def advance(self, k: int = 1, info: str = "") -> None:
        """Nothing to do."""

    def update(self, completed: int, info: str = "") -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""


def silent(_description: str, _total: int) -> Task:
    """The factory of tasks that report nowhere (the default when no progress is wanted)."""
    return _Silent()


def quiet(_message: str) -> None:
    """The log that says nothing."""


def rate_info(done: int, elapsed: float, unit: str = "img/s") -> str:
    """``'123.4 img/s'`` for a bar's status field ('' before any time has passed)."""
    return f"{done / elapsed:,.1f} {unit}" if elapsed > 0 else ""
