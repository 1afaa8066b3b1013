"""Shared by the preprocessing tests: the reference processor and the spec read off it."""

from __future__ import annotations

import pytest

from autotune.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def processor():  # type: ignore[no-untyped-def]
    """The reference image processor (PIL backend: torchvision is absent)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor()


@pytest.fixture(scope="module")
def spec(processor) -> PreprocessSpec:  # type: ignore[no-untyped-def]
    """The fast path's spec, read off the reference processor."""
    return PreprocessSpec.from_processor(processor)
