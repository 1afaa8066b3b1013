"""Batched normalisation: the formula, the memory layout, and the shapes it refuses."""

from __future__ import annotations

import pytest
import torch

from autotune.preprocess import PreprocessSpec, normalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_normalize_matches_formula(dtype: torch.dtype, spec: PreprocessSpec) -> None:
    """(x/255 - mean)/std within 1e-6 (float32), NCHW shape, dtype respected, input untouched."""
    x = torch.randint(0, 256, (5, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    y = normalize(x, spec, dtype=dtype)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (x.permute(0, 3, 1, 2).double() / 255.0 - mean) / std
    assert y.shape == (5, 3, 224, 224) and y.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert float((y.double() - expected).abs().max()) <= tol
    assert torch.equal(x, before)
    if dtype == torch.float32:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_normalize_rejects_bad_shapes(spec: PreprocessSpec) -> None:
    """Only NHWC with 3 channels is accepted."""
    with pytest.raises(ValueError):
        normalize(torch.zeros(2, 3, 224, 224, dtype=torch.uint8), spec)
