"""Find and load a CLIP model (hub id, local folder or offline stand-in) and expose the towers a scan runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.nn import functional as F

from autotune.errors import ModelError, one_line

# Where a model lives and what its weights are: re-exported here, their historical home.
from autotune.models.facts import STAND_IN, arch_string, resolve_model, weight_files, weights_hash
from autotune.models.synthetic import quiet_progress

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import CLIPModel, CLIPProcessor

__all__ = [
    "STAND_IN",
    "ImageTower",
    "LoadedClip",
    "arch_summary",
    "encode_images_reference",
    "encode_texts",
    "image_tower",
    "load_clip",
    "resolve_model",
    "weights_hash",
]

TEXT_MAX_LENGTH = 77
# Texts per forward pass in encode_texts: bounds activation memory for long query lists.
_TEXT_BATCH = 256


@dataclass
class LoadedClip:
    """A CLIP model ready for inference, with what a scan needs to know about it.

    Example:
        >>> loaded = load_clip("synthetic:tiny")
        >>> loaded.embed_dim, loaded.image_size, loaded.synthetic, len(loaded.weights_hash)
        (32, 224, True, 16)
    """

    model: CLIPModel
    processor: CLIPProcessor
    model_id: str
    path: Path
    synthetic: bool
    weights_hash: str
    embed_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    arch: str


def arch_summary(config: Any) -> str:
    """Summarise a CLIPConfig's image tower, e.g. ``vit-768x12-p32-224/proj512`` for ViT-B/32.

    Example:
        >>> from autotune.models.synthetic import synthetic_config
        >>> arch_summary(synthetic_config("clip-vit-base-patch32"))
        'vit-768x12-p32-224/proj512'
    """
    vision = config.vision_config
    return arch_string(
        vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size, config.projection_dim
    )


def _triple(values: Any, what: str) -> tuple[float, float, float]:
    """Coerce a processor's per-channel mean/std into a 3-tuple of floats."""
    if isinstance(values, int | float):
        values = [values] * 3
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ModelError(f"image processor {what} has {len(vals)} channels, expected 3")
    return vals[0], vals[1], vals[2]


def _image_size(processor: Any, config: Any) -> int:
    """The square input side the model is fed: the processor's crop size, else the vision config's."""
    crop = getattr(processor.image_processor, "crop_size", None)
    if isinstance(crop, dict) and crop.get("height"):
        return int(crop["height"])
    if crop is not None and getattr(crop, "height", None):
        return int(crop.height)
    size = config.vision_config.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def load_clip(model_id: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedClip:
    """Load a CLIP model and processor (hub id, local folder or ``synthetic:<variant>``) in eval mode.

    Errors (missing, offline, corrupt, wrong device) become one-line ``ModelError``s.

    Example:
        >>> loaded = load_clip("synthetic:tiny")
        >>> loaded.arch, loaded.model.training
        ('vit-64x2-p32-224/proj32', False)
    """
    from transformers import CLIPModel, CLIPProcessor

    path, synthetic = resolve_model(model_id)
    files = weight_files(path)
    use_safetensors = True if files and files[0].suffix == ".safetensors" else None
    try:
        with quiet_progress():
            model = CLIPModel.from_pretrained(path, dtype=dtype, use_safetensors=use_safetensors)
            processor = CLIPProcessor.from_pretrained(path)
    except Exception as exc:
        first = one_line(exc)
        raise ModelError(f"cannot load model '{model_id}' from {path}: {type(exc).__name__}: {first}") from exc
    try:
        # transformers wraps .to() with a signature mypy misreads; the call itself is plain nn.Module.to.
        model = cast(Any, model).to(device)
    except Exception as exc:  # e.g. "cuda" on a machine without it
        first = one_line(exc) or type(exc).__name__
        raise ModelError(f"cannot move model '{model_id}' to device '{device}': {first}") from exc
    model.eval()
    # Inference only: frozen parameters keep autograd bookkeeping out of every forward pass.
    model.requires_grad_(False)
    image_processor = processor.image_processor
    return LoadedClip(
        model=model,
        processor=processor,
        model_id=model_id,
        path=path,
        synthetic=synthetic,
        weights_hash=weights_hash(path),
        embed_dim=int(model.config.projection_dim),
        image_size=_image_size(processor, model.config),
        image_mean=_triple(image_processor.image_mean, "image_mean"),
        image_std=_triple(image_processor.image_std, "image_std"),
        arch=arch_summary(model.config),
    )


def _pooled(output: Any) -> torch.Tensor:
    """The projected embeddings from ``get_*_features``: a tensor (transformers 4) or a ModelOutput (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, tuple) and len(output) > 1:  # return_dict=False: (last_hidden_state, pooler_output)
        return output[1]
    raise ModelError(f"unexpected feature output type {type(output).__name__} from the model")


def _normalise(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows in float32 (half-precision norms lose too much for cosine ranking)."""
    return F.normalize(embeddings.float(), dim=-1)


class ImageTower(torch.nn.Module):
    """The image half of CLIP: pixels -> L2-normalised embeddings (what a scan runs).

    Example:
        >>> tower = ImageTower(load_clip("synthetic:tiny").model)
        >>> tower(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 32])
    """

    def __init__(self, model: CLIPModel) -> None:
        """Keep only ``model.vision_model`` and ``model.visual_projection`` (shared, not copied)."""
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed normalised pixels ``[N, 3, H, W]`` into float32 unit vectors ``[N, D]``."""
        weight = self.visual_projection.weight
        if pixel_values.dtype != weight.dtype:
            # Run in the tower's dtype: a float32 batch fed to a half model would fail in conv2d.
            pixel_values = pixel_values.to(weight.dtype)
        outputs = self.vision_model(pixel_values=pixel_values)
        pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
        return _normalise(self.visual_projection(pooled))


def image_tower(loaded: LoadedClip) -> ImageTower:
    """Return the image tower of a loaded model, in eval mode.

    Example:
        >>> image_tower(load_clip("synthetic:tiny")).training
        False
    """
    return ImageTower(loaded.model).eval()


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype a model's parameters live in."""
    param = next(model.parameters())
    return param.device, param.dtype


def encode_texts(loaded: LoadedClip, texts: list[str]) -> torch.Tensor:
    """Embed texts into float32 L2-normalised vectors ``[N, D]`` (tokenised, padded, truncated to 77 tokens).

    Example:
        >>> loaded = load_clip("synthetic:tiny")
        >>> encode_texts(loaded, ["a photo of a cat", "a photo of a dog"]).shape
        torch.Size([2, 32])
    """
    device, _ = _model_device_dtype(loaded.model)
    if not texts:
        return torch.empty(0, loaded.embed_dim, dtype=torch.float32)
    tokenizer = loaded.processor.tokenizer
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), _TEXT_BATCH):
            batch = tokenizer(
                list(texts[start : start + _TEXT_BATCH]),
                padding=True,
                truncation=True,
                max_length=TEXT_MAX_LENGTH,
                return_tensors="pt",
            )
            output = loaded.model.get_text_features(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            )
            chunks.append(_normalise(_pooled(output)).cpu())
    return torch.cat(chunks)


def truncated_texts(loaded: LoadedClip, texts: Sequence[str]) -> list[bool]:
    """Which texts are longer than the text tower's context (77 tokens): their embedding ignores the rest.

    Example:
        >>> truncated_texts(load_clip("synthetic:tiny"), ["a cat", "a cat " * 100])
        [False, True]
    """
    if not texts:
        return []
    tokenizer = loaded.processor.tokenizer
    counts = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return [len(ids) > TEXT_MAX_LENGTH for ids in counts]


def encode_images_reference(loaded: LoadedClip, pil_images: Sequence[Image]) -> torch.Tensor:
    """Embed PIL images the model-card way (processor + ``get_image_features``), unit float32 ``[N, D]``.

    Slow but canonical: tests and benchmarks compare the tuned scan path against it.

    Example:
        >>> from PIL import Image
        >>> loaded = load_clip("synthetic:tiny")
        >>> encode_images_reference(loaded, [Image.new("RGB", (300, 200))]).shape
        torch.Size([1, 32])
    """
    device, dtype = _model_device_dtype(loaded.model)
    if not pil_images:
        return torch.empty(0, loaded.embed_dim, dtype=torch.float32)
    inputs = loaded.processor.image_processor(images=list(pil_images), return_tensors="pt")
    with torch.inference_mode():
        output = loaded.model.get_image_features(pixel_values=inputs["pixel_values"].to(device, dtype))
        return _normalise(_pooled(output)).cpu()
