"""The terminal: one Rich progress bar for every long task, log lines on stderr, tables and JSON on stdout.

The only module (with the CLI) that draws or prints; the library reports through
:mod:`autotune.progress` callbacks that this module supplies (:func:`bar`, :func:`log`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from autotune.progress import Log, ProgressFactory, Task

console = Console(stderr=False)
err_console = Console(stderr=True)


class _BarTask:
    """One task of the shared Rich bar."""

    def __init__(self, description: str, total: int) -> None:
        """Start a bar of ``total`` units."""
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
    """A :data:`~autotune.progress.Log` printing dim lines on stderr (as written: configs show in brackets)."""
    err_console.print(message, style="dim", markup=False, highlight=False)


def log_for(enabled: bool) -> Log | None:
    """:func:`log` when ``enabled``, else None."""
    return log if enabled else None


def note(message: str) -> None:
    """One dim line on stderr, printed even with --json, never folded (scripts grep it, terminals wrap it)."""
    err_console.print(message, style="dim", soft_wrap=True, markup=False, highlight=False)


def warn(message: str) -> None:
    """A yellow warning line on stderr."""
    err_console.print(message, style="yellow", markup=False, highlight=False)


def echo(text: str, markup: bool = True) -> None:
    """Text on stdout: Rich markup, or as written with ``markup=False`` (blocks that hold brackets)."""
    console.print(text, markup=markup, highlight=markup)


def rule(title: str) -> None:
    """A horizontal rule with a title on stdout, between the stages of a long job."""
    console.rule(title)


def _fmt(value: object) -> str:
    """Format one figure for a table cell."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, Mapping):  # counts by name, e.g. the kernels a runtime chose
        return ", ".join(f"{k} x{v}" for k, v in value.items())
    return str(value)


def emit_json(payload: object) -> None:
    """Print a JSON document on stdout (and nothing else) for scripts."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_figures(title: str, figures: Mapping[str, object]) -> None:
    """Print a flat mapping of named figures as a two-column table (nested values are left to --json)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if isinstance(value, Mapping | list):
            continue
        table.add_row(key, _fmt(value))
    console.print(table)


def print_rows(title: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> None:
    """Print a list of records as a table with one column per key."""
    if not rows:
        console.print(f"[dim]{title}: nothing to show[/dim]")
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title, show_header=True, header_style="bold")
    for col in cols:
        table.add_column(col, justify="right" if isinstance(rows[0].get(col), int | float) else "left")
    for row in rows:
        table.add_row(*(_fmt(row.get(col, "")) for col in cols))
    console.print(table)


def show(figures: Mapping[str, object], title: str, as_json: bool) -> None:
    """A command's figures: JSON on stdout with ``as_json``, else a table."""
    if as_json:
        emit_json(figures)
    else:
        print_figures(title, figures)
