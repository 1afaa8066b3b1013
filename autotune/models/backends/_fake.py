"""The fake backend: fast, deterministic embeddings that depend on the pixels, for engine and tuner tests."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from autotune.errors import ConfigError
from autotune.models.backends._base import FAKE_PREFIX, Backend


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

    Example:
        >>> FakeBackend(16).embed(np.zeros((2, 16, 16, 3), np.uint8)).shape
        (2, 16)
    """

    def __init__(self, dim: int = 64, delay_s: float = 0.0) -> None:
        """A ``dim``-wide projection (fixed seed); ``delay_s`` seconds of sleep per image mimic a slow replica."""
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
    """Deterministic unit vectors for query texts under the fake backend (hash-seeded).

    Example:
        >>> fake_text_embeddings(["a cat", "a dog"], 8).shape
        (2, 8)
    """
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        rows.append(vec / np.linalg.norm(vec))
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)
