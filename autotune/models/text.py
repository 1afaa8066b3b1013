"""The text tower for queries: ONNX Runtime where it is installed, the eager model otherwise; float32 either way.

A query is a handful of tokens, so the eager model's cost is mostly per-operation overhead: ONNX Runtime runs
the same float32 graph about twice as fast at batch 1 (8 against 18 ms for ViT-B/32's text tower on 2 cores),
and its embeddings differ from eager ones by float32 rounding only (1.5e-7 at most, measured on 16 queries).
``retrieve`` and ``serve`` both embed through :class:`TextEncoder`, so they see the same numbers. The export
is built once per model weights into the backends' artefact cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotune.models.backends._base import _quiet
from autotune.models.backends._cache import artefact_path, backends_cache, materialise
from autotune.models.facts import model_facts
from autotune.models.loading import (
    TEXT_MAX_LENGTH,
    LoadedClip,
    _normalise,
    _pooled,
    encode_texts,
    load_clip,
    truncated_texts,
)

_OPSET = 17
_BATCH = 256


class TextEncoder:
    """Unit text embeddings of a model's text tower, and which texts its context cut short.

    Example:
        >>> enc = TextEncoder("synthetic:tiny")
        >>> vectors, cut = enc.encode(["a photo of a cat"])
        >>> vectors.shape, cut
        ((1, 32), [False])
    """

    def __init__(self, model_id: str, *, runtime: str = "auto") -> None:
        """Load the model (its tokenizer, and the eager tower as the fallback); ``runtime`` is auto, onnx or eager."""
        self.model_id = model_id
        self.loaded: LoadedClip = load_clip(model_id)
        self.embed_dim = int(self.loaded.embed_dim)
        self._session: Any = None
        if runtime != "eager":
            self._session = _onnx_session(model_id, self.loaded)
        self.runtime = "onnx" if self._session is not None else "eager"

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Float32 unit embeddings (texts, dim) and, per text, whether it was longer than the 77-token context."""
        texts = list(texts)
        cut = truncated_texts(self.loaded, texts)
        if self._session is None:
            return encode_texts(self.loaded, texts).numpy().astype(np.float32), cut
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32), cut
        tokenizer = self.loaded.processor.tokenizer
        parts = []
        for start in range(0, len(texts), _BATCH):
            batch = tokenizer(texts[start : start + _BATCH], padding=True, truncation=True,
                              max_length=TEXT_MAX_LENGTH, return_tensors="np")  # fmt: skip
            feeds = {"input_ids": batch["input_ids"].astype(np.int64),
                     "attention_mask": batch["attention_mask"].astype(np.int64)}  # fmt: skip
            parts.append(self._session.run(None, feeds)[0])
        return np.concatenate(parts).astype(np.float32), cut


def _onnx_session(model_id: str, loaded: LoadedClip) -> Any:
    """An ONNX Runtime session of the text tower, exported once into the cache; None where that cannot be."""
    try:
        import onnxruntime as ort
    except ImportError:  # the onnx extra is not installed: the eager tower
        return None
    path = artefact_path(backends_cache(), model_facts(model_id).weights_hash, "onnx-text", ".onnx", opset=_OPSET)
    try:
        materialise(path, lambda tmp: _export(loaded, tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3
        # Its threads sleep once a query is embedded: spinning, they would take the cores from the index scan
        # that follows at once (measured: 22 ms for that scan instead of 12).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - an export or runtime this model does not suit: the eager tower answers
        with contextlib.suppress(OSError):
            path.unlink()
        return None


class _UnitText(torch.nn.Module):
    """The text tower as one module: token ids and mask in, unit embeddings out (what the export traces)."""

    def __init__(self, loaded: LoadedClip) -> None:
        """Hold the model."""
        super().__init__()
        self.model = loaded.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings."""
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return _normalise(_pooled(out))


def _export(loaded: LoadedClip, dest: Path) -> None:
    """Export the text tower with dynamic batch and length axes (legacy exporter, as the image tower's)."""
    example = loaded.processor.tokenizer(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    with _quiet(), torch.inference_mode():
        torch.onnx.export(
            _UnitText(loaded).eval(),
            (example["input_ids"], example["attention_mask"]),
            str(dest),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "embeddings": {0: "batch"}},  # fmt: skip
            opset_version=_OPSET,
            do_constant_folding=True,
        )
