"""A synthetic measured table shared by the grid and replay tests (a helper module, not a test file)."""

from __future__ import annotations

import itertools
import math
from typing import Any

BONUS = {"eager": 0.0, "int8": 5.0, "onnx": 10.0}
OPTIMUM = {"a": 4, "b": 16, "c": "onnx"}
DEFAULT = {"a": 1, "b": 8, "c": "eager"}


def synthetic_rows(*, infeasible: bool = True) -> list[dict[str, Any]]:
    """A 3-parameter table (5 x 3 x 3) peaking at OPTIMUM; with ``infeasible``, 3 null rows and one row absent."""
    rows = []
    for a, b, c in itertools.product([1, 2, 3, 4, 5], [8, 16, 32], ["eager", "int8", "onnx"]):
        if infeasible and (a, b, c) == (5, 32, "onnx"):
            continue  # a point the table does not have (a constraint left it out)
        value = 100 - 3 * (a - 4) ** 2 - 5 * (math.log2(b) - 4) ** 2 + BONUS[c]
        rows.append({"a": a, "b": b, "c": c, "images_per_s": None if infeasible and (a, c) == (5, "int8") else value})
    return rows
