"""Measured grids: a table of configurations and their images/s, as the sampler replay searches it."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError

VALUE_KEY = "images_per_s"

Point = tuple[int, ...]  # the index of each parameter's value in its sorted list of values


def _order(value: Any) -> tuple[int, Any]:
    """Sort key that keeps None, booleans, numbers and strings apart (and True apart from 1)."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    return (3, str(value))


@dataclass(frozen=True)
class Grid:
    """A measured table on the product of each parameter's sorted values; ``None`` marks an infeasible point."""

    names: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    table: Mapping[Point, float | None]
    default: Point | None

    @property
    def best(self) -> float:
        """The best measured value."""
        return max(v for v in self.table.values() if v is not None)

    @property
    def size(self) -> int:
        """Points in the product space the samplers search (measured or not)."""
        return math.prod(len(v) for v in self.values)

    def value(self, point: Point) -> float | None:
        """The measured value at a point; None where infeasible or not in the table."""
        return self.table.get(point)

    def params(self, point: Point) -> dict[str, Any]:
        """The parameter dict of a point."""
        return {n: vals[i] for n, vals, i in zip(self.names, self.values, point, strict=True)}

    def neighbours(self, point: Point) -> list[Point]:
        """Points with one parameter moved one step in its sorted values."""
        out = []
        for k, i in enumerate(point):
            for j in (i - 1, i + 1):
                if 0 <= j < len(self.values[k]):
                    out.append(point[:k] + (j,) + point[k + 1 :])
        return out

    def ordinal(self, k: int) -> bool:
        """Whether parameter k is numeric (searched as an ordered index) rather than categorical."""
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values[k])


def make_grid(rows: Sequence[Mapping[str, Any]], default: Mapping[str, Any] | None = None) -> Grid:
    """Build a :class:`Grid` from measured rows; malformed rows are one-line ConfigErrors.

    A row is a parameter dict plus ``images_per_s`` (missing or null: infeasible; list or object values, such
    as ``runs``, are ignored), or ``{"params": {...}, "images_per_s": ...}``. Every row must name the same
    parameters; ``default`` (trial 0) must name them too (further keys are ignored).

    Example:
        >>> grid = make_grid([{"batch": 16, "images_per_s": 40.0}, {"batch": 32, "images_per_s": None}])
        >>> grid.best, grid.size
        (40.0, 2)
    """
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise ConfigError("grid: expected a non-empty list of rows (parameters + images_per_s)")
    parsed: list[tuple[dict[str, Any], float | None]] = [_parse_row(row, i) for i, row in enumerate(rows)]
    names = tuple(parsed[0][0])
    if not names:
        raise ConfigError("grid: row 0 has no parameters")
    for i, (params, _) in enumerate(parsed):
        if set(params) != set(names):
            raise ConfigError(f"grid: row {i} has parameters {sorted(params)}, row 0 has {sorted(names)}")
    # Distinct values by sort key: a set of raw values would merge True with 1.
    values = tuple(tuple(sorted({_order(p[n]): p[n] for p, _ in parsed}.values(), key=_order)) for n in names)
    index = [{_order(v): i for i, v in enumerate(vals)} for vals in values]

    def point_of(params: Mapping[str, Any]) -> Point:
        """A parameter dict's point (its values are known to be in the grid)."""
        return tuple(index[k][_order(params[n])] for k, n in enumerate(names))

    table: dict[Point, float | None] = {}
    first: dict[Point, int] = {}
    for i, (params, value) in enumerate(parsed):
        point = point_of(params)
        if point in table:
            raise ConfigError(f"grid: rows {first[point]} and {i} are the same configuration {params}")
        table[point], first[point] = value, i
    if all(v is None for v in table.values()):
        raise ConfigError(f"grid: no row has a measured {VALUE_KEY}")
    start = None
    if default is not None:
        if not isinstance(default, Mapping) or not set(names) <= set(default):
            got = sorted(default) if isinstance(default, Mapping) else type(default).__name__
            raise ConfigError(f"grid: the default names parameters {got}, the rows {sorted(names)}")
        if all(_order(default[n]) in index[k] for k, n in enumerate(names)):
            start = point_of(default)
    return Grid(names=names, values=values, table=table, default=start)


def _parse_row(row: Any, i: int) -> tuple[dict[str, Any], float | None]:
    """One row's parameters and value (None: infeasible), or a one-line ConfigError."""
    if not isinstance(row, Mapping):
        raise ConfigError(f"grid: row {i} is not an object, got {type(row).__name__}")
    nested = row.get("params")
    if isinstance(nested, Mapping):
        params = dict(nested)
        for name, v in params.items():
            if v is not None and not isinstance(v, str | int | float):
                raise ConfigError(f"grid: row {i}: parameter {name} must be a string, number or boolean, got {v!r}")
    else:
        # A flat row may carry measurements beside the parameters (`runs`: each scan's images/s): lists and
        # objects are data, not parameters.
        params = {k: v for k, v in row.items() if k != VALUE_KEY and not isinstance(v, list | dict)}
    value = row.get(VALUE_KEY)
    if value is None:
        return params, None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"grid: row {i}: {VALUE_KEY} must be a finite number >= 0 or null, got {value!r}")
    return params, float(value)


def load_grid_file(path: str | Path) -> tuple[list[Any], dict[str, Any] | None]:
    """Read a grid JSON file: a list of rows, or an object with ``rows`` (and optionally ``default``).

    Example:
        >>> rows, default = load_grid_file("grid.json")  # doctest: +SKIP
        >>> make_grid(rows, default).best  # doctest: +SKIP
        412.5
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    if isinstance(doc, list):
        return doc, None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ConfigError(f"{p}: expected a list of rows or an object with a 'rows' list")
    default = doc.get("default")
    if default is not None and not isinstance(default, dict):
        raise ConfigError(f"{p}: 'default' must be an object of parameters, got {type(default).__name__}")
    return doc["rows"], default



def all_points(grid: Grid) -> Iterator[Point]:
    """Every point of the product space."""
    return itertools.product(*(range(len(v)) for v in grid.values))
