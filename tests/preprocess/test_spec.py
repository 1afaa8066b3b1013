"""The preprocessing recipe: read off a processor, refused when inexpressible, and digested for indexes."""

from __future__ import annotations

import pytest

from autotune import preprocess as pp
from autotune.errors import ConfigError
from autotune.preprocess import PreprocessSpec


def test_spec_from_processor(processor) -> None:  # type: ignore[no-untyped-def]
    """Defaults equal OpenAI CLIP's; sizes, crop, mean/std and resample are read off the processor."""
    from transformers import CLIPImageProcessor

    assert PreprocessSpec.from_processor(processor) == PreprocessSpec()
    custom = CLIPImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 240, "width": 240}, image_mean=[0.5] * 3, resample=2
    )
    spec = PreprocessSpec.from_processor(custom)
    assert (spec.shortest_edge, spec.crop, spec.mean, spec.resample) == (256, 240, (0.5, 0.5, 0.5), 2)
    with pytest.raises(ConfigError):
        PreprocessSpec.from_processor(CLIPImageProcessor(size={"height": 224, "width": 224}))
    with pytest.raises(ConfigError):
        PreprocessSpec.from_processor(CLIPImageProcessor(crop_size={"height": 224, "width": 200}))
    with pytest.raises(ConfigError):
        PreprocessSpec.from_processor(CLIPImageProcessor(size={"shortest_edge": 224, "longest_edge": 400}))


def test_spec_from_clip_processor(tiny_model: str) -> None:
    """A full CLIPProcessor (image processor inside) works as well."""
    from autotune.models import load_clip

    loaded = load_clip(tiny_model)
    spec = PreprocessSpec.from_processor(loaded.processor)
    assert spec.crop == loaded.image_size
    assert spec.mean == pytest.approx(loaded.image_mean)


def test_version_is_a_string() -> None:
    """Indexes key on PREPROCESS_VERSION."""
    assert isinstance(pp.PREPROCESS_VERSION, str) and pp.PREPROCESS_VERSION


def test_digest_covers_the_recipe() -> None:
    """Every field of the spec changes the digest; the default's digest is pinned, as built indexes key on it."""
    base = PreprocessSpec()
    variants = [
        PreprocessSpec(shortest_edge=256),
        PreprocessSpec(crop=240),
        PreprocessSpec(mean=(0.5, 0.5, 0.5)),
        PreprocessSpec(std=(0.5, 0.5, 0.5)),
        PreprocessSpec(resample=2),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants) and all(len(d) == 16 for d in digests)
    # Changing this value orphans every index built so far: bump PREPROCESS_VERSION only with the pixels.
    assert base.digest() == "ef225f4e9eb594f1"
