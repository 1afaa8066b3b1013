"""The terminal: one Rich progress bar for every long task, log lines on stderr, tables and JSON on stdout.

The only module (with the CLI) that draws or prints; the library reports through
:mod:`autotune.progress` callbacks that this module supplies.
"""

from __future__ import annotations

from rich.console import Console

from autotune.progress import Log, ProgressFactory, Task

console = Console(stderr=False)
err_console = Console(stderr=True)


class _BarTask:
    """One task of the shared Rich bar."""

    def __init__(self, description: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # stderr, so stdout stays clean for tables and --json.
        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._task = self._p.add_task(description, total=total, info="")
        self._p.start()

    def advance(self, k: int = 1, info: str = "") -> None:
        """``k`` more units done."""
        self._p.update(self._task, advance=k, info=info)

    def update(self, completed: int, info: str = "") -> None:
        """``completed`` units done in all."""
        self._p.update(self._task, completed=completed, info=info)

    def close(self) -> None:
        """Stop rendering (the finished bar stays on screen)."""
        self._p.stop()


def bar(description: str, total: int) -> Task:
    """A :data:`~autotune.progress.ProgressFactory` drawing a Rich bar on stderr."""
    return _BarTask(description, total)


def progress_for(enabled: bool) -> ProgressFactory | None:
    """The bar factory when ``enabled``, else None (the library then reports nothing)."""
    return bar if enabled else None


def log(message: str) -> None:
    """A :data:`~autotune.progress.Log` printing dim lines on stderr."""
    err_console.print(f"[dim]{message}[/dim]", highlight=False)


def log_for(enabled: bool) -> Log | None:
    """:func:`log` when ``enabled``, else None."""
    return log if enabled else None
