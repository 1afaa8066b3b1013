"""Measured grids: rows to a product space of sorted values, malformed tables as one-line errors, grid files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from grid_tables import DEFAULT, synthetic_rows

from autotune.errors import ConfigError
from autotune.tuner.grid import load_grid_file, make_grid


def test_grid_from_rows() -> None:
    grid = make_grid(synthetic_rows(), DEFAULT)
    assert grid.names == ("a", "b", "c") and grid.size == 45 and len(grid.table) == 44
    assert grid.values[2] == ("eager", "int8", "onnx")
    assert grid.best == 110.0
    assert grid.default is not None and grid.params(grid.default) == DEFAULT
    assert grid.ordinal(0) and grid.ordinal(1) and not grid.ordinal(2)
    # Nested params and measurement lists beside the parameters read the same.
    nested = make_grid([{"params": {"a": 1}, "images_per_s": 3.0}, {"a": 2, "images_per_s": 4.0, "runs": [4.0]}])
    assert nested.names == ("a",) and nested.best == 4.0


@pytest.mark.parametrize(
    ("rows", "default", "message"),
    [
        ([], None, "non-empty list"),
        ([{"a": 1, "images_per_s": None}], None, "no row has a measured"),
        ([{"a": 1, "images_per_s": 1.0}, {"b": 1, "images_per_s": 1.0}], None, "row 1 has parameters"),
        ([{"a": 1, "images_per_s": 1.0}, {"a": 1, "images_per_s": 2.0}], None, "rows 0 and 1 are the same"),
        ([{"a": 1, "images_per_s": "fast"}], None, "finite number"),
        ([{"a": 1, "images_per_s": 1.0}], {"b": 1}, "the default names"),
    ],
)
def test_bad_grids_are_one_line_errors(rows: list[Any], default: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_grid(rows, default)
    assert "\n" not in str(info.value)


def test_grid_file_as_a_list_or_an_object(tmp_path: Path) -> None:
    """A bare list of rows has no default; an object carries its rows and default through unchanged."""
    rows = synthetic_rows()
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(rows))
    assert load_grid_file(bare) == (rows, None)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"rows": rows, "default": DEFAULT, "machine": "m"}))
    assert load_grid_file(wrapped) == (rows, DEFAULT)
    assert make_grid(*load_grid_file(wrapped)).default is not None
