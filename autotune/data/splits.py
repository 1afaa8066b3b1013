"""Hugging Face split selection: ``train+validation``, ``train[:10%]``, and where each scanned row came from."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from autotune.errors import DataError, one_line

if TYPE_CHECKING:  # datasets takes a second to import: only handlers that need it pay for it
    import datasets

#: (split name, first row, end row) of each scanned span; "index" for a dataset without splits.
Parts = list[tuple[str, int, int]]


def select_splits(
    ds_lib: ModuleType, loaded: datasets.DatasetDict, split: str | None, name: str
) -> tuple[datasets.Dataset, str, Parts]:
    """The rows ``split`` names, in Hugging Face's split syntax, with the split chosen and the scanned parts.

    The default is ``train`` if present, else the first split. Several splits are concatenated in the order
    given; the returned parts remember which rows came from where, so locators name their split. ``name`` is
    how the dataset is named in messages.

    Example:
        >>> rows, split, parts = select_splits(datasets, loaded, "train[:2]", "ds")  # doctest: +SKIP
        >>> split, parts  # doctest: +SKIP
        ('train[:2]', [('train', 0, 2)])
    """
    splits = list(loaded)
    if not splits:
        raise DataError(f"dataset {name} has no splits")
    if split is None:
        split = "train" if "train" in loaded else splits[0]
    sizes = {s: len(loaded[s]) for s in splits}
    try:
        spans = ds_lib.ReadInstruction.from_spec(split).to_absolute(sizes)
    except (ValueError, KeyError, AssertionError) as exc:
        raise DataError(
            f"dataset {name}: bad --split {split!r} ({one_line(exc, typed=True)}; splits: {', '.join(splits)})"
        ) from exc
    parts: Parts = [(s.splitname, s.from_, s.to) for s in spans]
    pieces = [
        loaded[s] if (start, stop) == (0, sizes[s]) else loaded[s].select(range(start, stop))
        for s, start, stop in parts
    ]
    if len(pieces) == 1:
        return pieces[0], split, parts
    try:
        return ds_lib.concatenate_datasets(pieces), split, parts
    except ValueError as exc:
        raise DataError(f"dataset {name}: splits {split!r} cannot be combined: {one_line(exc, typed=True)}") from exc


def split_counts(parts: Parts) -> dict[str, int]:
    """Images per split scanned (``{"index": n}`` for a dataset without splits).

    Example:
        >>> split_counts([("train", 0, 5), ("test", 0, 2), ("train", 8, 9)])
        {'train': 6, 'test': 2}
    """
    counts: dict[str, int] = {}
    for name, start, stop in parts:
        counts[name] = counts.get(name, 0) + stop - start
    return counts


def positions(parts: Parts) -> dict[str, tuple[int, int]]:
    """For each split, (row offset in the split, position of that row in the scanned table).

    Example:
        >>> positions([("train", 10, 15), ("test", 0, 2)])
        {'train': (10, 0), 'test': (0, 5)}
    """
    out: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, start, stop in parts:
        out.setdefault(name, (start, pos))
        pos += stop - start
    return out
