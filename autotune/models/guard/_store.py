"""The guard's disk cache: where references and check results live, their keys, and best-effort writes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from autotune.atomic import DiskFullError, atomic_path
from autotune.cache import cache_dir

log = logging.getLogger(__name__)


def _digest(record: dict[str, object]) -> str:
    """16 hex chars of a JSON record."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _guard_dir() -> Path:
    """The guard's cache folder: ``cache_dir("guard")``."""
    return cache_dir("guard")


def _cache_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` through ``atomic_path`` for a cache file the guard can do without: failures are logged.

    The result is already in hand: a read-only cache folder or a full disk only costs a re-check next time.
    """
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except (OSError, DiskFullError) as exc:
        log.warning("guard: could not cache %s (%s)", path.name, exc)
