"""CLIP models: hub/local/offline stand-in resolution, loading, and the towers a scan runs.

Names are imported on first use, so ``import autotune.models.backends`` (or the CLI) does not pay for torch
and transformers until a model is really needed.

Example:
    >>> from autotune.models import encode_texts, load_clip
    >>> loaded = load_clip("synthetic:tiny")
    >>> encode_texts(loaded, ["a photo of a cat"]).shape
    torch.Size([1, 32])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.lazy import lazy_exports

if TYPE_CHECKING:
    from autotune.models.facts import ModelFacts, model_facts, resolve_model, weights_hash
    from autotune.models.loading import (
        ImageTower,
        LoadedClip,
        arch_summary,
        encode_images_reference,
        encode_texts,
        image_tower,
        load_clip,
    )
    from autotune.models.synthetic import (
        SYNTHETIC_PREFIX,
        build_synthetic,
        is_synthetic,
        synthetic_config,
        variants,
    )
    from autotune.models.tokenizer import build_offline_tokenizer
    from autotune.models.tower import ClipImageTower, load_tower

# Public name -> defining submodule (facts: no torch, no transformers; tower: torch only).
_EXPORTS = {
    "ModelFacts": "facts",
    "model_facts": "facts",
    "resolve_model": "facts",
    "weights_hash": "facts",
    "ClipImageTower": "tower",
    "load_tower": "tower",
    "ImageTower": "loading",
    "LoadedClip": "loading",
    "arch_summary": "loading",
    "encode_images_reference": "loading",
    "encode_texts": "loading",
    "image_tower": "loading",
    "load_clip": "loading",
    "SYNTHETIC_PREFIX": "synthetic",
    "build_synthetic": "synthetic",
    "is_synthetic": "synthetic",
    "synthetic_config": "synthetic",
    "variants": "synthetic",
    "build_offline_tokenizer": "tokenizer",
}

__all__ = [
    "SYNTHETIC_PREFIX",
    "ClipImageTower",
    "ImageTower",
    "LoadedClip",
    "ModelFacts",
    "arch_summary",
    "build_offline_tokenizer",
    "build_synthetic",
    "encode_images_reference",
    "encode_texts",
    "image_tower",
    "is_synthetic",
    "load_clip",
    "load_tower",
    "model_facts",
    "resolve_model",
    "synthetic_config",
    "variants",
    "weights_hash",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
