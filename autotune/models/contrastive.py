"""The contrastive objective and its optimisation loop: label-aware InfoNCE, AdamW, warm-up then cosine decay."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.models.loading import ImageTower
from autotune.preprocess import PreprocessSpec, normalize
from autotune.progress import Task

if TYPE_CHECKING:  # torch and transformers load only when training really starts
    import torch
    from transformers import CLIPModel

#: Caption templates; the first is the query form used at retrieval time and is drawn most often.
TEMPLATES: tuple[str, ...] = (
    "a photo of {label}",
    "a picture of {label}",
    "an image of {label}",
    "a close-up photo of {label}",
    "{label}",
)
_TEMPLATE_WEIGHTS = np.array([0.4, 0.15, 0.15, 0.15, 0.15])
LEARNING_RATE = 5e-4
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05
_MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class TrainingData:
    """What the loop trains on: uint8 NHWC ``pixels``, their label indices, and every tokenised caption.

    Caption row ``label * len(TEMPLATES) + template`` holds that label filled into that template.
    """

    pixels: torch.Tensor
    image_labels: torch.Tensor
    input_ids: torch.Tensor
    attention: torch.Tensor
    spec: PreprocessSpec



def _lr_at(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return LEARNING_RATE * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: CLIPModel) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms, embeddings or the logit scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def label_aware_loss(
    logits: torch.Tensor, image_labels: torch.Tensor, caption_labels: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every caption of an image's label is a positive, never a negative.

    ``logits`` is images x captions (already scaled); ``image_labels`` and ``caption_labels`` give each row's
    and each column's label (every caption's label must occur among the images). Image -> caption: a
    cross-entropy over the batch's labels, a label's logit being the log-mean-exp of its captions' logits
    (mean, not sum, so a label with more distinct captions in the batch gets no bonus). Caption -> image:
    multi-positive InfoNCE, ``-log`` of the softmax mass on the images of the caption's label. The gradient
    never lowers the score of a same-label pair: duplicates of a label in a batch are not pushed apart.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
        >>> float(label_aware_loss(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))) < 1e-3
        True
    """
    import torch
    from torch.nn import functional as F

    batch_labels, label_of = torch.unique(image_labels, return_inverse=True)
    same = caption_labels[None, :] == batch_labels[:, None]  # batch labels x captions
    masked = logits[:, None, :].masked_fill(~same[None], float("-inf"))  # images x labels x captions
    label_logits = torch.logsumexp(masked, dim=-1) - same.sum(dim=1).clamp(min=1).log()[None, :]
    loss_images = F.cross_entropy(label_logits, label_of)
    per_caption = logits.T  # captions x images
    positive = caption_labels[:, None] == image_labels[None, :]
    on_positives = torch.logsumexp(per_caption.masked_fill(~positive, float("-inf")), dim=1)
    loss_texts = (torch.logsumexp(per_caption, dim=1) - on_positives).mean()
    return 0.5 * (loss_images + loss_texts)


def fit(
    model: CLIPModel,
    data: TrainingData,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    deadline: float | None,
    task: Task,
) -> tuple[list[float], bool]:
    """Run the optimisation steps in place on ``model``; return the losses and whether the deadline cut them.

    Batches, flips and templates come from a NumPy generator seeded with ``seed``: the same inputs give the
    same weights. At least one step runs; ``task`` advances once per step, with the loss as its status.
    """
    import torch

    model.train()
    tower = ImageTower(model)
    # fused: one pass over all parameters, about 3x faster than the per-tensor loop on CPU
    optimizer = torch.optim.AdamW(
        _param_groups(model), lr=LEARNING_RATE, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    rng = np.random.default_rng([seed, 0])
    n = len(data.pixels)
    batch = min(batch_size, n)
    order, cursor = rng.permutation(n), 0
    losses: list[float] = []
    for step in range(steps):
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        idx = torch.from_numpy(order[cursor : cursor + batch].copy())
        cursor += batch
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps)
        loss = _batch_loss(model, tower, data, idx, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        task.advance(1, info=f"loss {losses[-1]:.3f}")
        if deadline is not None and step + 1 < steps and time.perf_counter() >= deadline:
            return losses, True
    return losses, False


def _batch_loss(
    model: CLIPModel, tower: ImageTower, data: TrainingData, idx: torch.Tensor, rng: np.random.Generator
) -> torch.Tensor:
    """The loss of one batch of images (randomly flipped) against its distinct captions."""
    import torch
    from torch.nn import functional as F

    batch = len(idx)
    flips = torch.from_numpy(rng.random(batch) < 0.5)
    templates = torch.from_numpy(rng.choice(len(TEMPLATES), size=batch, p=_TEMPLATE_WEIGHTS))
    images = data.pixels[idx]
    images[flips] = images[flips].flip(2)  # NHWC: dim 2 is the width
    y = data.image_labels[idx]
    # The batch's distinct captions; every caption of an image's label is one of its positives.
    rows = torch.unique(y * len(TEMPLATES) + templates)
    img = tower(normalize(images, data.spec))
    text = model.text_model(input_ids=data.input_ids[rows], attention_mask=data.attention[rows])
    txt = F.normalize(model.text_projection(text.pooler_output), dim=-1)
    scale = model.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
    return label_aware_loss(scale * img @ txt.T, y, rows // len(TEMPLATES))
