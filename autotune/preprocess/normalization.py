"""Normalisation, batched on the consumer: uint8 NHWC pixels to the model's float NCHW input."""

from __future__ import annotations

import functools

import torch

from autotune.preprocess.spec import PreprocessSpec


@functools.lru_cache(maxsize=64)
def _scale_bias_rows(
    spec: PreprocessSpec, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, bias) tiled along one NHWC row, ``[1, 1, width * 3]`` float32.

    (x/255 - mean)/std == x*scale + bias with scale = 1/(255 std), bias = -mean/std (computed in float64).
    Tiling the 3 channel constants over a whole row makes the broadcast innermost-contiguous, so the
    multiply-add vectorises (a [3] broadcast over NHWC measured ~8x slower).
    """
    std = torch.tensor(spec.std, dtype=torch.float64)
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).repeat(width).view(1, 1, width * 3).to(device)
    bias = (-mean / std).to(torch.float32).repeat(width).view(1, 1, width * 3).to(device)
    return scale, bias


def normalize(batch: torch.Tensor, spec: PreprocessSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NHWC pixels -> normalised NCHW ``(x/255 - mean)/std`` in ``dtype``, as ``x*scale + bias``.

    The work stays in the input's NHWC memory: one uint8->float32 cast, then an in-place multiply and add by
    per-channel constants tiled along each row (vectorised; measured ~9x faster on CPU than a single
    mixed-dtype ``addcmul``, which is memory-bound on the cast anyway). The result is a permuted view: logical
    NCHW with ``torch.channels_last`` strides, which convolutional patch embeddings consume without a copy.
    Runs on the batch's device; half/bfloat16 outputs are computed in float32 and cast at the end.

    Example:
        >>> normalize(torch.zeros(2, 224, 224, 3, dtype=torch.uint8), PreprocessSpec()).shape
        torch.Size([2, 3, 224, 224])
    """
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC [N, H, W, 3], got {tuple(batch.shape)}")
    n, height, width, _ = batch.shape
    scale, bias = _scale_bias_rows(spec, width, batch.device)
    rows = batch.reshape(n, height, width * 3).to(torch.float32)
    if rows.data_ptr() == batch.data_ptr():  # already float32: reshape/to returned the caller's tensor
        rows = rows.clone()
    rows.mul_(scale).add_(bias)
    out = rows.view(n, height, width, 3).permute(0, 3, 1, 2)
    return out if dtype == torch.float32 else out.to(dtype)
