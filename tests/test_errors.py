"""Errors carry their exit code; foreign errors become the project's own, in one line, at one boundary."""

from __future__ import annotations

import json

import pytest

from autotune.errors import (
    INTERRUPTED,
    USER_ERROR,
    AutotuneError,
    ConfigError,
    DataError,
    ModelError,
    one_line,
    reraise_as,
)


def test_user_errors_exit_2() -> None:
    assert USER_ERROR == 2 and INTERRUPTED == 130
    assert all(cls("x").exit_code == 2 for cls in (AutotuneError, ConfigError, DataError, ModelError))


@pytest.mark.parametrize(
    ("message", "typed", "expected"),
    [
        ("first\nsecond", False, "first"),
        ("\n  \n  indented first  \nsecond", False, "indented first"),
        (ValueError("bad value\nhint: unrelated"), True, "ValueError: bad value"),
        (OSError(), True, "OSError"),
        (OSError(), False, ""),
        ("x" * 400, False, "x" * 297 + "..."),
    ],
    ids=["lines", "blank-lines", "typed", "typed-empty", "untyped-empty", "cut"],
)
def test_one_line(message: str | BaseException, typed: bool, expected: str) -> None:
    assert one_line(message, typed=typed) == expected


def test_reraise_as_names_the_first_line_and_keeps_the_cause() -> None:
    with pytest.raises(ConfigError, match=r"^--config: Expecting") as info:
        with reraise_as(ConfigError, "--config", ValueError):
            json.loads("{")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_reraise_as_leaves_other_errors_alone() -> None:
    with pytest.raises(DataError, match="^own$"):
        with reraise_as(ConfigError, "context"):
            raise DataError("own")
    with pytest.raises(KeyError):
        with reraise_as(ConfigError, "context", ValueError):
            raise KeyError("not listed")
    with pytest.raises(ModelError, match="^loading: RuntimeError: boom$"):
        with reraise_as(ModelError, "loading", typed=True):
            raise RuntimeError("boom\ndetails")
