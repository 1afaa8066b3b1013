"""The index folder: a marker, metadata, one committed generation of arrays and catalog, shards in flight.

Layout of a folder this project made (and the only files it ever deletes there)::

    .clip-autotune-index      marker: who made the folder, format version
    meta.json                 IndexMeta: what the embeddings were made with, the committed generation
    catalog-<g>.parquet       one row per image: stable id, locator, content identity, label, status
    ids-<g>.npy               embedded ids (sorted), int64
    embeddings-<g>.npy        their embeddings, row-aligned with ids
    plan-<g>.parquet          the catalog an update in progress will commit as generation g
    shard-*.npz               embeddings of that update, committed as the scan goes
    index.lock, writer.json   the writer's lock and who holds it

``meta.json`` is the commit point: it names the generation that readers load. A generation's files are
written before it is named, and old ones are removed after, so a kill anywhere leaves a loadable index.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from autotune.atomic import atomic_path, atomic_write_json, remove_leftovers
from autotune.engine.sink import ShardSinkFactory, read_shards
from autotune.errors import AutotuneError
from autotune.index.query import DEFAULT_SCAN, IndexMatrix

INDEX_FORMAT = 2
MARKER = ".clip-autotune-index"
SHARD_PREFIX = "shard"
# Names this project writes in an index folder; nothing else there is ever deleted.
_OWN_PATTERNS = (
    "meta.json",
    "catalog-*.parquet",
    "plan-*.parquet",
    "ids-*.npy",
    "embeddings-*.npy",
    f"{SHARD_PREFIX}-*.npz",
    "writer.json",
    "index.lock",
    # format 1 (before stable ids)
    "ids.npy",
    "embeddings.npy",
)


class IndexBusyError(AutotuneError):
    """Another process is writing this index."""


class NotAnIndexError(AutotuneError):
    """A folder that this project did not make: it refuses to write there or delete anything."""


@dataclass(frozen=True)
class IndexKey:
    """What the embeddings are made with; a stored index with another key is rebuilt, never served.

    ``recipe`` names the inference path (e.g. ``cpu:onnx-int8`` or ``cpu:eager+gpu:fp16``) and ``preprocess``
    is the digest of the preprocessing spec, so a change of backend, precision or preprocessing is noticed.
    """

    model: str
    weights_hash: str
    recipe: str
    preprocess: str
    embed_dim: int
    dtype: str = "float16"

    def describe_difference(self, other: IndexKey) -> str:
        """Which parts differ, in words (e.g. ``the backend changed (cpu:eager -> cpu:int8)``)."""
        parts = []
        if (self.model, self.weights_hash) != (other.model, other.weights_hash):
            parts.append("the model weights changed")
        if self.recipe != other.recipe:
            parts.append(f"the backend changed ({self.recipe} -> {other.recipe})")
        if self.preprocess != other.preprocess:
            parts.append("the preprocessing changed")
        if (self.embed_dim, self.dtype) != (other.embed_dim, other.dtype):
            parts.append("the index settings changed")
        return ", ".join(parts) or "nothing"


@dataclass
class IndexMeta:
    """``meta.json``: the key, the dataset it follows, the committed generation and an update in flight."""

    key: IndexKey
    dataset: str
    dataset_fingerprint: str = ""
    generation: int = 0
    next_id: int = 0
    records: int = 0
    embedded: int = 0
    skipped: int = 0
    complete: bool = False
    pending: dict[str, Any] | None = None  # {"generation", "fingerprint", "counts"} of an unfinished update
    profile: str | None = None  # the profile whose configuration embedded the last images (None: safe default)
    config: str = ""  # that configuration, in words
    format: int = INDEX_FORMAT
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexMeta:
        """Parse ``meta.json`` (raises ValueError/TypeError/KeyError when it is not this format)."""
        data = dict(data)
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"index format {data.get('format')!r}")
        key = IndexKey(**data.pop("key"))
        names = {f.name for f in fields(cls)}
        return cls(key=key, **{k: v for k, v in data.items() if k in names})


class EmbeddingIndex:
    """One index folder: safe to point anywhere, since it writes only into folders it made.

    Example:
        >>> idx = EmbeddingIndex(Path("my-index"))
        >>> idx.claim()  # creates it, or refuses a non-empty folder this project did not make
        >>> idx.load(); idx.search(text_embeddings, k=9)  # doctest: +SKIP
    """

    def __init__(self, path: Path, scan: str = DEFAULT_SCAN) -> None:
        """Remember the folder; nothing is read or written until :meth:`claim` or :meth:`load`.

        ``scan`` is how queries read the embeddings (:data:`autotune.index.query.SCAN_MODES`).
        """
        self.path = Path(path).expanduser()
        self.scan = scan
        self.ids: np.ndarray | None = None
        self.embeddings: np.ndarray | None = None
        self.catalog: dict[str, list[Any]] | None = None
        self.matrix: IndexMatrix | None = None
        self.meta: IndexMeta | None = None  # the metadata of the loaded generation

    # ------------------------------------------------------------------------------------ the folder

    @property
    def marker(self) -> Path:
        """The marker file that makes the folder ours."""
        return self.path / MARKER

    def is_marked(self) -> bool:
        """Whether this project made the folder."""
        return self.marker.is_file()

    def claim(self, *, create: bool = True) -> None:
        """Make the folder ours: create it (or adopt an empty one) with a marker; refuse anything else.

        ``create=False`` only checks, so a command can refuse a bad folder before doing any work.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotAnIndexError(f"--index-dir {self.path} is a file, not a folder")
        if self.is_marked():
            try:
                fmt = json.loads(self.marker.read_text()).get("format", 0)
            except (OSError, ValueError, AttributeError):
                fmt = 0
            if fmt > INDEX_FORMAT:
                raise NotAnIndexError(f"index {self.path} was made by a newer clip-autotune (format {fmt})")
            return
        if self.path.is_dir() and self._made_by_format_1():
            pass  # an index of the first format (no marker yet): ours, adopted and rebuilt on first use
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise NotAnIndexError(
                f"{self.path} is not empty and is not an index made by clip-autotune (no {MARKER} file): "
                "choose a new or empty folder for --index-dir; nothing was changed"
            )
        if not create:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.marker, {"tool": "clip-autotune", "kind": "embedding-index", "format": INDEX_FORMAT})

    def _made_by_format_1(self) -> bool:
        """Whether the folder holds a format-1 index of this project and nothing else."""
        try:
            old = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return False
        known = {"meta.json", "ids.npy", "embeddings.npy"}
        names = {p.name for p in self.path.iterdir()}
        shards = {n for n in names if n.startswith(f"{SHARD_PREFIX}-")}
        return isinstance(old, dict) and old.get("format") == 1 and names - shards <= known

    def own_files(self) -> list[Path]:
        """Every file in the folder that this project wrote (by name), marker excluded."""
        found: set[Path] = set()
        for pattern in _OWN_PATTERNS:
            found.update(p for p in self.path.glob(pattern) if p.is_file())
        return sorted(found)

    def clear(self) -> None:
        """Delete every file this project wrote here (the marker stays): the next build starts empty."""
        if not self.is_marked():
            raise NotAnIndexError(f"{self.path} is not an index made by clip-autotune: nothing deleted")
        for p in self.own_files():
            if p.name not in ("index.lock", "writer.json"):
                p.unlink(missing_ok=True)
        remove_leftovers(self.path)
        self.ids = self.embeddings = self.catalog = self.matrix = self.meta = None

    def size_bytes(self) -> int:
        """Disk space of the files this project wrote."""
        return sum(p.stat().st_size for p in self.own_files())

    # ------------------------------------------------------------------------------------ the writer

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the writer lock; a second writer is refused at once, naming the process that holds it.

        Readers of a complete index take no lock.
        """
        from filelock import FileLock, Timeout

        self.claim()
        lock = FileLock(str(self.path / "index.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise IndexBusyError(
                f"index {self.path} is being written by {self._holder()}: wait for it to end"
            ) from None
        try:
            atomic_write_json(
                self.path / "writer.json",
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
            )
            remove_leftovers(self.path)  # temporary files of a writer that was killed
            yield
        finally:
            with contextlib.suppress(OSError):
                (self.path / "writer.json").unlink()
            lock.release()

    def _holder(self) -> str:
        """Who holds the writer lock, in words."""
        try:
            info = json.loads((self.path / "writer.json").read_text())
            since = time.strftime("%H:%M:%S", time.localtime(float(info["started"])))
            return f"process {info['pid']} on {info['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    # ------------------------------------------------------------------------------------ metadata

    @property
    def meta_path(self) -> Path:
        """Where the metadata lives."""
        return self.path / "meta.json"

    def read_meta(self) -> IndexMeta | None:
        """The stored metadata, or None for a missing, unreadable or older-format index."""
        try:
            return IndexMeta.from_dict(json.loads(self.meta_path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write_meta(self, meta: IndexMeta) -> None:
        """Replace the metadata atomically (the commit point of every change)."""
        meta.updated = time.time()
        atomic_write_json(self.meta_path, meta.to_dict())

    def file(self, kind: str, generation: int) -> Path:
        """Path of one generation's file: kind is catalog, plan, ids or embeddings."""
        ext = "parquet" if kind in ("catalog", "plan") else "npy"
        return self.path / f"{kind}-{generation}.{ext}"

    def sink(self, dtype: str, shard_images: int = 1024) -> ShardSinkFactory:
        """Factory the engine's replicas use to stream embeddings into this index."""
        return ShardSinkFactory(str(self.path), shard_images=shard_images, dtype=dtype, prefix=SHARD_PREFIX)

    def shard_ids(self) -> np.ndarray:
        """Ids embedded by committed shards of the update in flight."""
        return read_shards(self.path, SHARD_PREFIX)[0]

    def drop_update(self) -> None:
        """Forget an update in flight: its plan and shards go, the committed generation stays."""
        for p in [*self.path.glob("plan-*.parquet"), *self.path.glob(f"{SHARD_PREFIX}-*.npz")]:
            p.unlink(missing_ok=True)

    def drop_old_generations(self, keep: int) -> None:
        """Remove committed files of generations other than ``keep``."""
        for kind in ("catalog", "ids", "embeddings"):
            for p in self.path.glob(f"{kind}-*.*"):
                if p != self.file(kind, keep):
                    p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ catalog i/o

    def write_table(self, path: Path, columns: dict[str, list[Any]]) -> None:
        """Write a catalog-shaped table atomically as parquet."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), str(tmp))

    @staticmethod
    def read_table(path: Path) -> dict[str, list[Any]]:
        """Read a catalog-shaped table."""
        import pyarrow.parquet as pq

        return dict(pq.read_table(str(path)).to_pydict())

    def write_arrays(self, generation: int, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Write one generation's ids and embeddings atomically."""
        for kind, arr in (("ids", ids), ("embeddings", embeddings)):
            with atomic_path(self.file(kind, generation)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)

    # ------------------------------------------------------------------------------------ queries

    def load(self) -> None:
        """Load the committed generation, embeddings as stored (float16 by default: half the bytes to read).

        A writer may replace the generation while we read: the metadata is then read again.
        """
        for attempt in range(3):
            meta = self.read_meta()
            if meta is None or not meta.complete:
                raise AutotuneError(f"index {self.path} is not complete: run a retrieval to finish it")
            try:
                catalog = self.read_table(self.file("catalog", meta.generation))
                ids = np.load(self.file("ids", meta.generation))
                embeddings = np.load(self.file("embeddings", meta.generation))
            except FileNotFoundError:
                if attempt == 2:
                    raise AutotuneError(f"index {self.path} changed while loading; run again") from None
                continue
            self.catalog, self.ids, self.embeddings = catalog, ids, embeddings
            self.matrix = IndexMatrix(ids, embeddings, self.scan)
            self.meta = meta
            return

    def search(self, queries: np.ndarray, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first, ties by id (see :class:`~autotune.index.query.IndexMatrix`)."""
        if self.matrix is None:
            self.load()
        assert self.matrix is not None
        if len(self.matrix) == 0:
            raise AutotuneError(f"index {self.path} holds no embedded image")
        return self.matrix.search(queries, k)

    def __len__(self) -> int:
        """Images in the loaded index."""
        return 0 if self.ids is None else len(self.ids)
