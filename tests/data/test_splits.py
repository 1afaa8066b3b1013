"""Hugging Face split selection: the split syntax, the default split, bad specs, and where rows came from."""

from __future__ import annotations

import pytest

from autotune.data.splits import positions, select_splits, split_counts
from autotune.errors import DataError


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    """A two-split DatasetDict held in memory (5 train rows, 3 test rows)."""
    import datasets

    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"x": list(range(5))}),
            "test": datasets.Dataset.from_dict({"x": list(range(100, 103))}),
        }
    )


def test_default_is_train_and_spans_are_remembered(loaded) -> None:  # type: ignore[no-untyped-def]
    import datasets

    rows, split, parts = select_splits(datasets, loaded, None, "ds")
    assert (split, parts, len(rows)) == ("train", [("train", 0, 5)], 5)
    rows, split, parts = select_splits(datasets, loaded, "train[1:3]+test", "ds")
    assert list(rows["x"]) == [1, 2, 100, 101, 102]
    assert parts == [("train", 1, 3), ("test", 0, 3)]
    assert split_counts(parts) == {"train": 2, "test": 3}
    assert positions(parts) == {"train": (1, 0), "test": (0, 2)}


def test_bad_split_is_one_line_naming_the_splits(loaded) -> None:  # type: ignore[no-untyped-def]
    import datasets

    with pytest.raises(DataError, match="bad --split 'validation'") as info:
        select_splits(datasets, loaded, "validation", "ds")
    assert "splits: train, test" in str(info.value) and "\n" not in str(info.value)
