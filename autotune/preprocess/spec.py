"""The preprocessing recipe: CLIP's geometry and normalisation constants, and the digest indexes key on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from autotune.errors import ConfigError

# Bump whenever fast_preprocess's code changes its output for some input; indexes key on
# PreprocessSpec.digest(), which folds this in with the spec itself and the decode options.
PREPROCESS_VERSION = "2"

# PIL's own default decompression-bomb limit (about 9459 x 9459): above it an image is "too-large".
MAX_IMAGE_PIXELS = 89_478_485

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _size_get(size: Any, key: str) -> Any:
    """Read one key of a processor size: a plain dict (older transformers) or a SizeDict (5.x)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    if isinstance(size, int):
        return size if key in ("height", "width", "shortest_edge") else None
    return getattr(size, key, None)


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """Geometry and normalisation of CLIP preprocessing (defaults: OpenAI CLIP ViT-B/32, 224 px).

    ``shortest_edge``: the short side after the (aspect-preserving) resize; ``crop``: the side of the centre
    crop; ``mean``/``std``: per-channel normalisation in 0-1 units; ``resample``: PIL filter (3 = bicubic).

    Example:
        >>> PreprocessSpec().crop
        224
        >>> PreprocessSpec(shortest_edge=256, crop=240).shortest_edge
        256
    """

    shortest_edge: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = 3

    def digest(self) -> str:
        """16 hex characters over everything that shapes the pixels a model sees: spec, decode, code version.

        Example:
            >>> PreprocessSpec().digest() == PreprocessSpec(crop=240).digest()
            False
        """
        recipe = {
            "spec": [self.shortest_edge, self.crop, list(self.mean), list(self.std), self.resample],
            "decode": {"draft": False, "max_pixels": MAX_IMAGE_PIXELS, "exif_transpose": False},
            "code": PREPROCESS_VERSION,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_processor(cls, processor: Any) -> PreprocessSpec:
        """Read the spec off a CLIPProcessor or CLIPImageProcessor (either backend, dict or SizeDict sizes).

        Raises :class:`ConfigError` for a processor whose pipeline this spec cannot express (no resize of the
        shortest edge, a non-square crop, a rescale other than 1/255...).

        Example:
            >>> from transformers import CLIPImageProcessor  # doctest: +SKIP
            >>> PreprocessSpec.from_processor(CLIPImageProcessor()) == PreprocessSpec()  # doctest: +SKIP
            True
        """
        ip = getattr(processor, "image_processor", processor)
        shortest = _size_get(getattr(ip, "size", None), "shortest_edge")
        crop_h = _size_get(getattr(ip, "crop_size", None), "height")
        crop_w = _size_get(getattr(ip, "crop_size", None), "width")
        problems = []
        if not getattr(ip, "do_resize", True) or not shortest:
            problems.append(f"size={getattr(ip, 'size', None)!r} (need a shortest_edge resize)")
        if _size_get(getattr(ip, "size", None), "longest_edge"):
            problems.append(f"size={getattr(ip, 'size', None)!r} (a longest_edge cap is not supported)")
        if not getattr(ip, "do_center_crop", True) or not crop_h or crop_h != crop_w:
            problems.append(f"crop_size={getattr(ip, 'crop_size', None)!r} (need a square centre crop)")
        factor = getattr(ip, "rescale_factor", 1 / 255)
        if not getattr(ip, "do_rescale", True) or abs(float(factor) - 1 / 255) > 1e-12:
            problems.append(f"rescale_factor={factor!r} (need 1/255)")
        if not getattr(ip, "do_normalize", True):
            problems.append("do_normalize=False")
        if problems:
            raise ConfigError(f"unsupported image processor {type(ip).__name__}: " + "; ".join(problems))
        mean = _three(getattr(ip, "image_mean", None) or OPENAI_CLIP_MEAN)
        std = _three(getattr(ip, "image_std", None) or OPENAI_CLIP_STD)
        resample = getattr(ip, "resample", None)
        try:
            resample_id = int(resample) if resample is not None else 3
        except (TypeError, ValueError) as exc:  # e.g. a torchvision InterpolationMode
            raise ConfigError(f"unsupported resample {resample!r} (need a PIL filter)") from exc
        return cls(shortest_edge=int(shortest), crop=int(crop_h), mean=mean, std=std, resample=resample_id)


def _three(values: float | Iterable[float]) -> tuple[float, float, float]:
    """A per-channel constant as a 3-tuple of floats (a scalar applies to every channel)."""
    if isinstance(values, int | float):
        return (float(values), float(values), float(values))
    out = [float(v) for v in values]
    if len(out) != 3:
        raise ConfigError(f"expected 3 channel values, got {values!r}")
    return (out[0], out[1], out[2])
