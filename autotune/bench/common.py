"""Helpers shared by the benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count (ONNX Runtime and OpenVINO
    backends follow torch's count)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def env_restored(name: str, value: str | None = None) -> Iterator[None]:
    """Run a block with environment variable ``name`` set to ``value`` (None: as it is), then restore it.

    The block may change it too (compiled backends point TORCHINDUCTOR_CACHE_DIR at their cache): the
    caller's value comes back either way.
    """
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
