"""Terminal output: tables of figures, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)
err_console = Console(stderr=True)


def _fmt(value: Any) -> str:
    """Format one figure for a table cell."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def emit_json(payload: Any) -> None:
    """Print a JSON document on stdout (and nothing else) for scripts."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_figures(title: str, figures: Mapping[str, Any]) -> None:
    """Print a flat mapping of named figures as a two-column table."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if isinstance(value, Mapping | list):
            continue
        table.add_row(key, _fmt(value))
    console.print(table)


def print_rows(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
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
