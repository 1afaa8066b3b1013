"""Embedding sinks: where replicas stream (ids, embeddings) as they scan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.atomic import atomic_path, raise_if_disk_full, remove_leftovers


@dataclass(frozen=True)
class ShardSinkFactory:
    """Picklable factory: each replica writes its own shard files into ``folder``.

    A shard is committed atomically (:func:`autotune.atomic.atomic_path`: a temporary name, fsync, rename),
    so an interrupted scan or a full disk leaves only whole shards under the final names.
    """

    folder: str
    shard_images: int = 4096
    dtype: str = "float16"
    prefix: str = "shard"

    def __call__(self, consumer: int) -> ShardSink:
        """Open the sink inside the consumer process."""
        return ShardSink(Path(self.folder), consumer, self.shard_images, np.dtype(self.dtype), self.prefix)

    def remove_leftovers(self) -> int:
        """Delete temporary files of writers killed mid-commit (the scan's workers are all gone by then)."""
        return remove_leftovers(Path(self.folder)) if Path(self.folder).is_dir() else 0


class ShardSink:
    """Buffers embeddings and commits them in shards named ``<prefix>-c<consumer>-<pid>-<seq>.npz``."""

    def __init__(self, folder: Path, consumer: int, shard_images: int, dtype: np.dtype, prefix: str) -> None:
        """Create ``folder`` if needed; a full disk there is reported as one (:class:`DiskFullError`)."""
        self.folder = folder
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise_if_disk_full(exc, folder)
            raise
        # The pid keeps names unique across resumed runs that reuse consumer numbers.
        self.stem = f"{prefix}-c{consumer}-{os.getpid()}"
        self.shard_images = shard_images
        self.dtype = dtype
        self.seq = 0
        self._ids: list[np.ndarray] = []
        self._embs: list[np.ndarray] = []
        self._count = 0

    def write(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Buffer one batch; commit a shard when enough images are buffered."""
        self._ids.append(np.asarray(ids, np.int64).copy())
        self._embs.append(np.asarray(embeddings).astype(self.dtype))
        self._count += len(ids)
        if self._count >= self.shard_images:
            self.flush()

    def flush(self) -> None:
        """Commit buffered embeddings as one shard file."""
        if not self._count:
            return
        final = self.folder / f"{self.stem}-{self.seq:06d}.npz"
        # A full disk becomes one DiskFullError line (the consumer reports it, the scan stops); atomic_path
        # removes the partial temporary file, and the shards committed before stay whole.
        # np.savez gets an open file: given a name without .npz it would write to another name.
        with atomic_path(final) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.concatenate(self._ids), embeddings=np.concatenate(self._embs))
        self.seq += 1
        self._ids, self._embs, self._count = [], [], 0

    def close(self) -> None:
        """Commit the remainder."""
        self.flush()


def read_shards(folder: Path, prefix: str = "shard") -> tuple[np.ndarray, np.ndarray]:
    """Load every committed shard: (ids int64 (n,), embeddings (n, dim)), in file-name order."""
    files = sorted(Path(folder).glob(f"{prefix}-*.npz"))
    if not files:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids, embs = [], []
    for f in files:
        with np.load(f) as z:
            ids.append(z["ids"])
            embs.append(z["embeddings"])
    return np.concatenate(ids), np.concatenate(embs)
