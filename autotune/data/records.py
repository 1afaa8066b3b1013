"""What every image database is: a list of :class:`Record` objects and raw bytes per record.

A source lists its images as records (stable integer ids, in sorted order) and hands out each image's raw
encoded bytes; decoding is the preprocessing's job. Sources are sent to spawned worker processes, so their
pickled state is only paths and options: listings and dataset handles are rebuilt lazily on the other side.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.atomic import DiskFullError, atomic_write_text
from autotune.cache import cache_dir


@dataclass(frozen=True, slots=True)
class Record:
    """One image of a source: ``id`` (its index in sorted order), ``locator`` and optional ``label``.

    ``locator`` is a path relative to the folder (:class:`FolderSource`), ``"index:<n>"`` (a row of a
    Hugging Face dataset) or ``"<shard>/<member>@<offset>+<size>"`` (a member of a WebDataset tar shard).
    ``caption`` (a WebDataset sample's text) and ``common_name`` (an iNaturalist category's) are kept apart
    from the label; sources without them leave them ``None``.

    Example:
        >>> Record(0, "Felis catus/0000001.jpg", "Felis catus").label
        'Felis catus'
    """

    id: int
    locator: str
    label: str | None
    caption: str | None = None
    common_name: str | None = None


def digest(parts: Iterator[str]) -> str:
    """16 hex characters summarising a stream of strings."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


class ImageSource(abc.ABC):
    """A database of images: records in a stable order, raw bytes per record, a content fingerprint.

    Subclasses implement :meth:`_scan` (records and fingerprint, computed together once so that they
    describe the same snapshot) and :meth:`read_bytes`.
    """

    kind: str = ""
    #: Attributes rebuilt lazily after unpickling, never sent to worker processes.
    _TRANSIENT: tuple[str, ...] = ("_records", "_fingerprint", "_lock", "_identities")

    def __init__(self, path: Path) -> None:
        """Remember the location; nothing is read yet."""
        self.path = path
        self._records: list[Record] | None = None
        self._fingerprint: str | None = None
        self._identities: list[str] | None = None
        self._lock: threading.RLock | None = threading.RLock()

    @abc.abstractmethod
    def _scan(self) -> tuple[list[Record], str]:
        """List the records and compute the fingerprint of the same snapshot of the data."""

    @abc.abstractmethod
    def read_bytes(self, record: Record) -> bytes:
        """Return the encoded bytes of one image (raises ``OSError`` when they cannot be read)."""

    def _ensure_scanned(self) -> None:
        """Run :meth:`_scan` once per process (thread-safe)."""
        if self._records is not None:
            return
        if self._lock is None:
            self._lock = threading.RLock()
        with self._lock:
            if self._records is None:
                records, fingerprint = self._scan()
                self._fingerprint = fingerprint
                self._records = records

    def records(self) -> list[Record]:
        """All images in a stable order; ``records()[i].id == i``. Computed once, then cached.

        Example:
            >>> [r.locator for r in open_source("photos").records()][:1]  # doctest: +SKIP
            ['Felis catus/0000001.jpg']
        """
        self._ensure_scanned()
        assert self._records is not None
        return self._records

    def __len__(self) -> int:
        """Number of images."""
        return len(self.records())

    def fingerprint(self) -> str:
        """16 hex characters that change when the data changes (taken with the listing, then cached).

        Example:
            >>> open_source("photos").fingerprint()  # doctest: +SKIP
            '3f1c0d9a2b7e4c55'
        """
        self._ensure_scanned()
        assert self._fingerprint is not None
        return self._fingerprint

    def content_fingerprint(self) -> str:
        """16 hex characters of the images themselves: relative locators and each image's bytes, never mtimes.

        Two machines holding copies of the same database agree on it wherever the copies live and whenever
        they were written (a shared study's default name depends on it). Every byte is read once; the result
        is cached under the cache folder against :meth:`fingerprint`, so a later call costs a listing.

        Example:
            >>> open_source("photos").content_fingerprint()  # doctest: +SKIP
            '9d04b7e1c2a35f60'
        """
        key = hashlib.blake2b(f"{self.kind}|{self.path}|{self.fingerprint()}".encode(), digest_size=10).hexdigest()
        cached = cache_dir("content-fingerprints") / f"{key}.txt"
        try:
            text = cached.read_text(encoding="ascii").strip()
            if len(text) == 16:
                return text
        except (OSError, UnicodeDecodeError):
            pass
        parts = [self.kind]
        for rec in self.records():
            try:
                data = hashlib.blake2b(self.read_bytes(rec), digest_size=12).hexdigest()
            except (OSError, ValueError):
                data = "unreadable"
            parts.append(f"{rec.locator}|{data}")
        value = digest(iter(parts))
        # The cache only saves time: a cache that cannot take the value costs a re-hash next time, never the run.
        with contextlib.suppress(OSError, DiskFullError):
            atomic_write_text(cached, value)
        return value

    def identities(self) -> list[str]:
        """Per record, in :meth:`records` order, a short string that changes when that image's content does.

        The base implementation hashes each image's bytes (sources with no cheaper signal, such as Hugging
        Face datasets); folders use size and modification time. Computed once, then cached.

        Example:
            >>> open_source("photos").identities()[:1]  # doctest: +SKIP
            ['38211:1732780800000000000']
        """
        self._ensure_scanned()
        if self._identities is None:
            out = []
            for rec in self.records():
                try:
                    out.append("b2:" + hashlib.blake2b(self.read_bytes(rec), digest_size=12).hexdigest())
                except (OSError, ValueError):
                    out.append("unreadable")  # tried again next time: it may have been fixed meanwhile
            self._identities = out
        return self._identities

    def labels(self) -> list[str]:
        """Sorted unique labels (images without one are ignored).

        Example:
            >>> open_source("photos").labels()[:2]  # doctest: +SKIP
            ['Coffea arabica', 'Felis catus']
        """
        return sorted({r.label for r in self.records() if r.label is not None})

    def work_unit(self, record: Record) -> str | None:
        """The unit of work a record belongs to when a scan is split between machines (None: any split).

        Records of one unit are consecutive in :meth:`records`; a split between Ray nodes cuts only between
        units where it can (a WebDataset shard goes whole to one node, read by it alone).
        """
        return None

    def display_path(self, record: Record) -> str:
        """Where a record's image is, for people: ``<database>#<locator>`` unless the source knows a file."""
        return f"{self.path}#{record.locator}"

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for humans: what the source is and how many images and labels it holds."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickle paths and options only, whatever the size of the database."""
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore paths and options; listings and handles are rebuilt on first use."""
        self.__dict__.update(state)
        for name in self._TRANSIENT:
            setattr(self, name, None)

    def __repr__(self) -> str:
        """Class and location."""
        return f"{type(self).__name__}({str(self.path)!r})"

