"""Preallocated shared-memory batch slots: producers write uint8 images, queues carry slot indices."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np


@dataclass(frozen=True)
class SlotLayout:
    """Shape of the slot pool; picklable, so workers can attach by name."""

    name: str
    slots: int
    capacity: int
    height: int
    width: int

    @property
    def image_bytes(self) -> int:
        """Bytes of one HWC uint8 image."""
        return self.height * self.width * 3

    @property
    def pixels_bytes(self) -> int:
        """Bytes of all pixel slots (ids follow them)."""
        return self.slots * self.capacity * self.image_bytes

    @property
    def total_bytes(self) -> int:
        """Size of the shared segment: pixels, then one int64 id per image position."""
        return self.pixels_bytes + self.slots * self.capacity * 8


class SlotPool:
    """A view of the shared segment: ``pixels[slot]`` is (capacity, H, W, 3) uint8, ``ids[slot]`` int64.

    The parent creates (and alone unlinks) the segment; workers attach by name.
    """

    def __init__(self, layout: SlotLayout, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.layout = layout
        self._shm = shm
        self.owner = owner
        buf = shm.buf
        self.pixels = np.ndarray(
            (layout.slots, layout.capacity, layout.height, layout.width, 3), dtype=np.uint8, buffer=buf
        )
        self.ids = np.ndarray((layout.slots, layout.capacity), dtype=np.int64, buffer=buf, offset=layout.pixels_bytes)

    @classmethod
    def create(cls, slots: int, capacity: int, height: int = 224, width: int = 224) -> SlotPool:
        """Allocate a new segment for ``slots`` batches of ``capacity`` images."""
        probe = SlotLayout("", slots, capacity, height, width)
        shm = shared_memory.SharedMemory(create=True, size=probe.total_bytes)
        layout = SlotLayout(shm.name, slots, capacity, height, width)
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
        try:
            self._shm.close()
        except BufferError:  # pragma: no cover - a stray view; the mapping goes with the process
            pass
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
