"""Inference backends for a scan replica: one small interface, a real torch backend and a fast fake."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.errors import ConfigError

FAKE_PREFIX = "fake:"


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """What a replica runs: the model id, device, precision and backend kind; cheap to pickle.

    ``model_id`` starting with ``fake:`` selects :class:`FakeBackend` (``fake:64`` gives 64-dim
    embeddings); ``fake_delay_s`` adds a per-image sleep so scheduling tests can mimic slow replicas.
    """

    model_id: str
    device: str = "cpu"
    precision: str = "fp32"
    backend: str = "eager"
    fake_delay_s: float = 0.0

    @property
    def is_fake(self) -> bool:
        """True for the deterministic test backend."""
        return self.model_id.startswith(FAKE_PREFIX)


class Backend(ABC):
    """Turns a batch of preprocessed uint8 images (N, H, W, 3) into L2-normalised float32 embeddings."""

    embed_dim: int
    device: str = "cpu"

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed one batch; returns float32 (N, embed_dim), rows of unit norm."""

    def timings(self) -> dict[str, float]:
        """Seconds spent per stage since the last call (transfer, forward), then reset."""
        return {}


def _fake_dim(model_id: str) -> int:
    """Embedding size encoded in a ``fake:<dim>`` id (default 64)."""
    tail = model_id[len(FAKE_PREFIX) :]
    try:
        return int(tail) if tail else 64
    except ValueError as exc:
        raise ConfigError(f"bad fake model id {model_id!r}: use fake:<dim>, e.g. fake:64") from exc


class FakeBackend(Backend):
    """Deterministic, fast stand-in: mean-pools 8x8 patches of colour and projects them randomly.

    Its embeddings depend on the pixels, so exactness tests (top-k against brute force, ids aligned with
    embeddings) are meaningful without loading a network.
    """

    def __init__(self, dim: int = 64, delay_s: float = 0.0) -> None:
        self.embed_dim = dim
        self.delay_s = delay_s
        rng = np.random.default_rng(1234)
        self._proj = rng.standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self._forward_s = 0.0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pool to 8x8x3, centre, project, normalise."""
        start = time.perf_counter()
        n, h, w, c = batch.shape
        pooled = batch[:, : h - h % 8, : w - w % 8].reshape(n, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4))
        feats = pooled.reshape(n, -1).astype(np.float32) / 255.0 - 0.5
        emb = feats @ self._proj
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        if self.delay_s:
            time.sleep(self.delay_s * n)
        self._forward_s += time.perf_counter() - start
        return emb.astype(np.float32)

    def timings(self) -> dict[str, float]:
        """Forward seconds since the last call."""
        out, self._forward_s = {"forward": self._forward_s}, 0.0
        return out


def fake_text_embeddings(texts: list[str], dim: int) -> np.ndarray:
    """Deterministic unit vectors for query texts under the fake backend (hash-seeded)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        rows.append(vec / np.linalg.norm(vec))
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)


class TorchBackend(Backend):
    """The CLIP image tower in PyTorch eager mode, on CPU (fp32) or one CUDA device (fp16/bf16/fp32).

    On a GPU the batch goes through a reused pinned host buffer and a non-blocking copy; normalisation
    runs on the device as one fused op on the uint8 tensor.
    """

    def __init__(self, spec: BackendSpec) -> None:
        import torch

        from autotune.models.loading import image_tower, load_clip
        from autotune.preprocess import PreprocessSpec

        self.torch = torch
        self.device = spec.device
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.precision]
        if spec.device == "cpu" and dtype != torch.float32:
            raise ConfigError(f"precision {spec.precision} is for GPUs; CPU replicas run fp32")
        loaded = load_clip(spec.model_id)
        self.preprocess_spec = PreprocessSpec.from_processor(loaded.processor)
        self.embed_dim = loaded.embed_dim
        self.dtype = dtype
        self.tower = image_tower(loaded).to(device=spec.device, dtype=dtype).eval()
        del loaded
        self._pinned: Any = None
        self._times = {"transfer": 0.0, "forward": 0.0}

    def _to_device(self, batch: np.ndarray) -> Any:
        """Host uint8 batch -> device tensor, via a reused pinned buffer on CUDA."""
        torch = self.torch
        host = torch.from_numpy(batch)
        if self.device == "cpu":
            return host
        if self._pinned is None or self._pinned.shape[0] < host.shape[0] or self._pinned.shape[1:] != host.shape[1:]:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
        staging = self._pinned[: host.shape[0]]
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalise on the device, run the tower, return float32 numpy."""
        from autotune.preprocess import normalize

        torch = self.torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = self._to_device(batch)
            x = normalize(x, self.preprocess_spec, dtype=self.dtype)
            t1 = time.perf_counter()
            emb = self.tower(x).float()
            out = emb.cpu().numpy()  # synchronises the device, so forward time is honest
        t2 = time.perf_counter()
        self._times["transfer"] += t1 - t0
        self._times["forward"] += t2 - t1
        return out

    def timings(self) -> dict[str, float]:
        """Transfer and forward seconds since the last call."""
        out = dict(self._times)
        self._times = {"transfer": 0.0, "forward": 0.0}
        return out


def build_backend(spec: BackendSpec) -> Backend:
    """Top-level builder, called inside the worker process so heavy objects are never pickled."""
    if spec.is_fake:
        return FakeBackend(_fake_dim(spec.model_id), spec.fake_delay_s)
    if spec.backend != "eager":
        raise ConfigError(f"unknown backend {spec.backend!r}; available: eager")
    return TorchBackend(spec)
