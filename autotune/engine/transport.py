"""Preallocated shared-memory batch slots: producers write uint8 images, queues carry slot indices.

Every segment is named ``autotune-<creator pid>-<random>``, so whoever outlives a creator killed with SIGKILL
(the tuner's parent process) can find and remove exactly that creator's segments.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

SHM_PREFIX = "autotune-"
SHM_DIR = Path("/dev/shm")  # where Linux exposes POSIX shared memory by name
_TRACKER_TYPE = "shared_memory"  # the resource tracker's name for these segments


def segment_prefix(pid: int) -> str:
    """Name prefix of every segment created by process ``pid`` (the trailing dash keeps 12 apart from 123)."""
    return f"{SHM_PREFIX}{pid}-"


def segment_names(pid: int) -> list[str]:
    """Names of the segments process ``pid`` created that still exist (empty where /dev/shm is absent)."""
    prefix = segment_prefix(pid)
    try:
        return sorted(e.name for e in os.scandir(SHM_DIR) if e.name.startswith(prefix))
    except OSError:  # no /dev/shm (not Linux): nothing to find
        return []


def remove_segments(pid: int) -> int:
    """Unlink every segment process ``pid`` created; return how many were removed.

    Call it only once that process is dead. Its segments are registered with the resource tracker this
    process shares with it (workers inherit it, spawned or forked from the fork server), so each is
    unregistered too: otherwise the tracker would unlink it again at exit and print a "leaked
    shared_memory" warning plus an error.
    """
    removed = 0
    for name in segment_names(pid):
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:  # removed meanwhile by someone else, who also unregistered it
            continue
        removed += 1
        with contextlib.suppress(OSError, ValueError):
            resource_tracker.unregister(f"/{name}", _TRACKER_TYPE)
    return removed


def mapped_semaphores(pid: int) -> set[str]:
    """Names (``/mp-...``) of the named semaphores process ``pid`` has open: its queues' and locks'.

    Read while it is still alive, just before it is killed: multiprocessing unlinks a semaphore's name when
    its creator exits cleanly, so a killed one leaves them to the resource tracker, which unlinks them only
    when the whole run ends (with a "leaked semaphore objects" warning). Empty where /proc is absent.
    """
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")
    except OSError:
        return set()
    return {"/" + line.rsplit("/sem.", 1)[1] for line in maps.splitlines() if f"{SHM_DIR}/sem." in line}


def own_semaphores(pid: int) -> set[str]:
    """The named semaphores child ``pid`` has open that this process does not: the ones it created itself.

    Its parent's queues, which it maps too, are unlinked by the parent when they go.
    """
    return mapped_semaphores(pid) - mapped_semaphores(os.getpid())


def release_semaphores(names: set[str]) -> int:
    """Unlink the named semaphores of a dead process (from :func:`mapped_semaphores`); return how many.

    They were registered with the resource tracker this process shares with it, so each is unregistered too
    (else the tracker unlinks it again at exit, with a warning).
    """
    removed = 0
    for name in names:
        try:
            (SHM_DIR / f"sem.{name.lstrip('/')}").unlink()
        except FileNotFoundError:  # its creator got to unlink it after all
            continue
        removed += 1
        with contextlib.suppress(OSError, ValueError):
            resource_tracker.unregister(name, "semaphore")
    return removed


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_segments() -> int:
    """Unlink the project's segments whose creator is gone; return how many.

    A run killed together with its resource tracker (``kill -9`` of a whole process group) leaves its segment
    behind with nobody to unlink it; the next scan sweeps it. These were never registered with our tracker, so
    nothing is unregistered (the tracker would print an error for a name it does not know).
    """
    try:
        names = [p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        pid = name[len(SHM_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            (SHM_DIR / name).unlink()
            removed += 1
    return removed


@dataclass(frozen=True)
class SlotLayout:
    """Shape of the slot pool; picklable, so workers can attach by name."""

    name: str
    slots: int
    capacity: int
    height: int
    width: int
    # Bytes kept per image for an encoded JPEG a replica decodes itself (``decode: gpu``); 0: none.
    encoded_bytes: int = 0

    @property
    def image_bytes(self) -> int:
        """Bytes of one HWC uint8 image."""
        return self.height * self.width * 3

    @property
    def pixels_bytes(self) -> int:
        """Bytes of all pixel slots (ids follow them)."""
        return self.slots * self.capacity * self.image_bytes

    @property
    def ids_offset(self) -> int:
        """Where the ids start: after the pixels and the encoded images."""
        return self.pixels_bytes + self.slots * self.capacity * self.encoded_bytes

    @property
    def total_bytes(self) -> int:
        """Size of the shared segment: pixels, encoded images, then an int64 id and length per image position."""
        return self.ids_offset + self.slots * self.capacity * 16


class SlotPool:
    """A view of the shared segment: ``pixels[slot]`` is (capacity, H, W, 3) uint8, ``ids[slot]`` int64.

    With ``encoded_bytes``, ``encoded[slot, i, :lengths[slot, i]]`` holds image i's JPEG bytes for the replica
    to decode; a length of 0 means its pixels are ready (the producer decoded it).

    The parent creates (and alone unlinks) the segment; workers attach by name.
    """

    def __init__(self, layout: SlotLayout, shm: shared_memory.SharedMemory, owner: bool) -> None:
        """Views on ``shm``; use :meth:`create` (the owner) or :meth:`attach` (a worker)."""
        self.layout = layout
        self._shm = shm
        self.owner = owner
        buf = shm.buf
        self.pixels = np.ndarray(
            (layout.slots, layout.capacity, layout.height, layout.width, 3), dtype=np.uint8, buffer=buf
        )
        self.encoded = np.ndarray(
            (layout.slots, layout.capacity, layout.encoded_bytes), dtype=np.uint8, buffer=buf,
            offset=layout.pixels_bytes,
        )  # fmt: skip
        shape = (layout.slots, layout.capacity)
        self.ids = np.ndarray(shape, dtype=np.int64, buffer=buf, offset=layout.ids_offset)
        self.lengths = np.ndarray(shape, dtype=np.int64, buffer=buf, offset=layout.ids_offset + shape[0] * shape[1] * 8)

    @classmethod
    def create(
        cls, slots: int, capacity: int, height: int = 224, width: int = 224, encoded_bytes: int = 0
    ) -> SlotPool:
        """Allocate a new segment for ``slots`` batches of ``capacity`` images (and their JPEGs, if asked)."""
        remove_orphan_segments()
        probe = SlotLayout("", slots, capacity, height, width, encoded_bytes)
        name = f"{segment_prefix(os.getpid())}{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=probe.total_bytes)
        layout = SlotLayout(shm.name, slots, capacity, height, width, encoded_bytes)
        return cls(layout, shm, owner=True)

    @classmethod
    def attach(cls, layout: SlotLayout) -> SlotPool:
        """Attach to the parent's segment from a worker."""
        shm = shared_memory.SharedMemory(name=layout.name)
        return cls(layout, shm, owner=False)

    def close(self) -> None:
        """Drop this process's mapping; the owner also unlinks the segment."""
        # numpy views must go before the buffer can be released.
        self.pixels = None  # type: ignore[assignment]
        self.ids = None  # type: ignore[assignment]
        self.encoded = None  # type: ignore[assignment]
        self.lengths = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:  # pragma: no cover - a stray view; the mapping goes with the process
            pass
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
