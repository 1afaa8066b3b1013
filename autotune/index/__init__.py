"""The embedding index: stable ids, incremental updates, atomic generations, millisecond queries.

Example:
    >>> from autotune.index import EmbeddingIndex
    >>> idx = EmbeddingIndex(default_index_dir(source, "synthetic:tiny", "cpu:eager"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.cache import cache_dir
from autotune.index.query import DEFAULT_SCAN, SCAN_MODES, IndexMatrix, top_k
from autotune.index.store import (
    INDEX_FORMAT,
    MARKER,
    EmbeddingIndex,
    IndexBusyError,
    IndexKey,
    IndexMeta,
    NotAnIndexError,
)
from autotune.index.update import (
    IndexBookkeepingError,
    UpdatePlan,
    commit_update,
    is_up_to_date,
    plan_update,
    skipped_rows,
)

__all__ = [
    "INDEX_FORMAT",
    "MARKER",
    "DEFAULT_SCAN",
    "SCAN_MODES",
    "EmbeddingIndex",
    "IndexBookkeepingError",
    "IndexBusyError",
    "IndexKey",
    "IndexMatrix",
    "IndexMeta",
    "IndexSummary",
    "NotAnIndexError",
    "UpdatePlan",
    "commit_update",
    "default_index_dir",
    "indexes_root",
    "is_up_to_date",
    "list_indexes",
    "plan_update",
    "remove_index",
    "skipped_rows",
    "top_k",
]


def indexes_root() -> Path:
    """Where default index folders live: ``<cache>/indexes``."""
    return cache_dir("indexes")


def default_index_dir(dataset: str, model: str, recipe: str, split: str | None = None) -> Path:
    """A stable folder per (dataset, split, model, inference recipe) under the cache.

    The recipe is in the name, so profiles with different backends keep separate indexes instead of
    rebuilding one another's.
    """
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", f"{Path(dataset).name}-{model}-{recipe}").strip("-")[:70]
    digest = hashlib.sha256(f"{Path(dataset).resolve()}|{split}|{model}|{recipe}".encode()).hexdigest()[:10]
    return indexes_root() / f"{slug}-{digest}"


@dataclass
class IndexSummary:
    """One index folder, as `autotune index list` shows it."""

    name: str
    path: str
    dataset: str
    model: str
    recipe: str
    records: int
    embedded: int
    skipped: int
    complete: bool
    size_mb: float
    updated: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


def _summary(index: EmbeddingIndex) -> IndexSummary:
    """Summarise one marked folder (an unreadable one shows as incomplete)."""
    meta = index.read_meta()
    return IndexSummary(
        name=index.path.name,
        path=str(index.path),
        dataset=meta.dataset if meta else "?",
        model=meta.key.model if meta else "?",
        recipe=meta.key.recipe if meta else "?",
        records=meta.records if meta else 0,
        embedded=meta.embedded if meta else 0,
        skipped=meta.skipped if meta else 0,
        complete=bool(meta and meta.complete and not meta.pending),
        size_mb=round(index.size_bytes() / 2**20, 2),
        updated=meta.updated if meta else 0.0,
    )


def list_indexes(root: Path | None = None) -> list[IndexSummary]:
    """Every index folder this project made under ``root`` (default: the cache), newest first."""
    root = root or indexes_root()
    found = [EmbeddingIndex(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return sorted((_summary(i) for i in found if i.is_marked()), key=lambda s: -s.updated)


def remove_index(name: str, root: Path | None = None) -> dict[str, Any]:
    """Delete an index: a folder name under the cache or a path; only folders this project marked.

    Files it did not write are left where they are (and the folder with them), and reported.
    """
    root = root or indexes_root()
    path = Path(name).expanduser()
    if not path.is_dir() and (root / name).is_dir():
        path = root / name
    index = EmbeddingIndex(path)
    if not path.is_dir():
        raise NotAnIndexError(f"no index named {name!r} (see `autotune index list`)")
    if not index.is_marked():
        raise NotAnIndexError(f"{path} is not an index made by clip-autotune: nothing deleted")
    freed = index.size_bytes()
    with index.writer():
        index.clear()
    for leftover in ("index.lock", "writer.json", MARKER):
        (path / leftover).unlink(missing_ok=True)
    foreign = sorted(p.name for p in path.iterdir())
    if not foreign:
        path.rmdir()
    return {"removed": str(path), "freed_bytes": freed, "left_foreign_files": foreign}
