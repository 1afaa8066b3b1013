"""What every backend shares: the spec a replica is built from, the interface, a stopwatch, a quiet context."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

FAKE_PREFIX = "fake:"
REFERENCE_BACKEND = "eager"
# Backends whose replica runs no torch (ONNX Runtime, OpenVINO): their workers skip importing it. Kept here,
# not derived from the registry, because the registry imports the backend classes, which import this module;
# a test checks that it lists exactly the registry's exported backends.
TORCH_FREE_BACKENDS = ("onnx", "onnx-int8", "onnx-int8s", "openvino", "openvino-bf16", "openvino-int8")


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """What a replica runs: the model id, device, precision and backend kind; cheap to pickle.

    ``model_id`` starting with ``fake:`` selects :class:`FakeBackend` (``fake:64`` gives 64-dim
    embeddings); ``fake_delay_s`` adds a per-image sleep so scheduling tests can mimic slow replicas.
    ``batch`` is the replica's batch size: compiled backends build their kernels for it during setup
    (without it, on the first batch, and that compile time still counts as setup). ``threads``: the
    replica's intra-op thread count for ONNX Runtime and OpenVINO (default: torch's current count).
    ``calibration``: the stored calibration set (:mod:`autotune.models.calibration`) that statically
    quantised backends (``onnx-int8s``, ``openvino-int8``) are calibrated on; its digest keys their artefact.

    Example:
        >>> BackendSpec(model_id="fake:16").is_fake
        True
        >>> BackendSpec(model_id="synthetic:tiny", backend="onnx").needs_torch
        False
    """

    model_id: str
    device: str = "cpu"
    precision: str = "fp32"
    backend: str = REFERENCE_BACKEND
    fake_delay_s: float = 0.0
    batch: int | None = None
    threads: int | None = None
    calibration: str | None = None
    streams: int = 1  # OpenVINO: inference streams sharing the threads, each running its share of a batch

    @property
    def is_fake(self) -> bool:
        """True for the deterministic test backend."""
        return self.model_id.startswith(FAKE_PREFIX)

    @property
    def needs_torch(self) -> bool:
        """Whether the replica runs torch (its worker must set torch's threads); ONNX/OpenVINO ones do not."""
        return not self.is_fake and not (self.device == "cpu" and self.backend in TORCH_FREE_BACKENDS)


class Backend(ABC):
    """Turns a batch of preprocessed uint8 images (N, H, W, 3) into L2-normalised float32 embeddings.

    ``setup_seconds``: time this process spent getting ready (loading, exporting, quantising, compiling,
    waiting for another process's build); ``cache_hit``: whether the one-off artefact was found on disk rather
    than built here; ``artefact``: its path, if it has one.

    Example:
        >>> backend = build_backend(BackendSpec(model_id="fake:8"))  # doctest: +SKIP
        >>> backend.embed(np.zeros((2, 16, 16, 3), np.uint8)).shape  # doctest: +SKIP
        (2, 8)
    """

    embed_dim: int
    device: str = "cpu"
    name: str = REFERENCE_BACKEND
    setup_seconds: float = 0.0
    cache_hit: bool = False
    artefact: str | None = None

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed one batch; returns float32 (N, embed_dim), rows of unit norm."""

    def embed_decoded(self, pixels: Any) -> np.ndarray:
        """Embed a uint8 NHWC torch tensor a batch decoder left on this replica's device (``decode: gpu``).

        The default goes through host memory; the torch backend keeps a device tensor where it is.
        """
        return self.embed(np.ascontiguousarray(pixels.cpu().numpy()))

    def timings(self) -> dict[str, float]:
        """Seconds spent per stage since the last call (transfer, forward), then reset."""
        return {}

    def info(self) -> dict[str, Any]:
        """Setup figures for telemetry: backend, setup seconds, cache hit, artefact path."""
        return {
            "backend": self.name,
            "setup_seconds": round(self.setup_seconds, 3),
            "cache_hit": self.cache_hit,
            "artefact": self.artefact,
        }


class _Timed:
    """Transfer/forward stopwatch shared by the backends."""

    def __init__(self) -> None:
        """Start both stages at zero."""
        self._times = {"transfer": 0.0, "forward": 0.0}

    def timings(self) -> dict[str, float]:
        """Transfer and forward seconds since the last call."""
        out = dict(self._times)
        self._times = {"transfer": 0.0, "forward": 0.0}
        return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter/quantiser chatter (deprecation notes, 'consider pre-processing' hints).

    What they still print goes to stderr: NNCF draws progress bars on stdout, which broke `--json` output.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
