"""Find and load a CLIP model (hub id, local folder or offline stand-in) and expose the towers a scan runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.nn import functional as F

from autotune.atomic import DiskFullError, atomic_write_json
from autotune.cache import cache_dir
from autotune.errors import ModelError
from autotune.models.synthetic import (
    MARKER_FILE,
    SYNTHETIC_PREFIX,
    build_synthetic,
    is_synthetic,
    quiet_progress,
)

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import CLIPModel, CLIPProcessor

STAND_IN = f"{SYNTHETIC_PREFIX}clip-vit-base-patch32"
TEXT_MAX_LENGTH = 77
# Texts per forward pass in encode_texts: bounds activation memory for long query lists.
_TEXT_BATCH = 256
# Seconds to wait for the hub's first answer: a machine without network must fail in seconds, not minutes.
_DEFAULT_HUB_TIMEOUT = 5.0

_CONFIG_FILES = ["config.json", "preprocessor_config.json", "processor_config.json", MARKER_FILE]
_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
]
_SAFETENSORS_FILES = ["*.safetensors", "model.safetensors.index.json"]
_BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
# A hub id: "name" or "owner/name" (letters, digits, -_.), the shape huggingface_hub accepts.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def _env_flag(name: str) -> bool:
    """Whether an environment flag is set the way huggingface_hub reads it (1/on/yes/true)."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """Whether the hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, now or at hub import)."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_timeout() -> float:
    """Seconds to wait for hub metadata: $HF_HUB_ETAG_TIMEOUT if set, else a short default."""
    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return _DEFAULT_HUB_TIMEOUT


def _weight_files(path: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads: safetensors when present, else PyTorch ``.bin`` files."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    return sorted(p for p in path.glob("*.bin") if p.name.startswith("pytorch_model"))


def _not_available(model_id: str) -> ModelError:
    """The one-line error for a hub model that cannot be had on this machine."""
    return ModelError(
        f"model '{model_id}' is not cached and the hub cannot be reached; "
        f"use a local directory or the offline stand-in --model {STAND_IN}"
    )


def _complete_snapshot(folder: Path) -> bool:
    """Whether a downloaded snapshot has a config and weights (an interrupted download may lack them)."""
    return (folder / "config.json").is_file() and bool(_weight_files(folder))


def _from_hub(model_id: str) -> Path:
    """Resolve a hub id to a local snapshot: the cache first, then (unless offline) a download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    base = _CONFIG_FILES + _TOKENIZER_FILES
    with contextlib.suppress(LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        local = Path(
            snapshot_download(model_id, local_files_only=True, allow_patterns=base + _SAFETENSORS_FILES)
        )
        if _complete_snapshot(local):
            return local
    if _hub_offline():
        raise _not_available(model_id)
    timeout = _hub_timeout()
    try:
        # Safetensors first (no pickle, faster to load); only a repo without them gets its .bin weights.
        folder = Path(
            snapshot_download(model_id, allow_patterns=base + _SAFETENSORS_FILES, etag_timeout=timeout)
        )
        if not _weight_files(folder):
            folder = Path(snapshot_download(model_id, allow_patterns=base + _BIN_FILES, etag_timeout=timeout))
    except GatedRepoError as exc:
        raise ModelError(
            f"model '{model_id}' is gated on the hub: accept its terms and log in first"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(f"model '{model_id}' was not found on the hub (wrong id, or private)") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"model '{model_id}': revision not found on the hub") from exc
    except HFValidationError as exc:
        raise ModelError(f"'{model_id}' is neither a local directory nor a valid hub model id") from exc
    except Exception as exc:  # offline mode, DNS failure, timeouts, proxies: all mean "cannot be had here"
        raise _not_available(model_id) from exc
    if not _complete_snapshot(folder):
        raise ModelError(f"model '{model_id}' on the hub has no config.json or no weight files")
    return folder


def resolve_model(model_id: str) -> tuple[Path, bool]:
    """Turn a model id into a local folder and whether it is a random-weight stand-in.

    ``synthetic:<variant>`` builds (once) an offline stand-in, an existing directory is used as is, anything
    else is a hub id looked up in the local cache, then downloaded unless ``HF_HUB_OFFLINE`` is set.

    Example:
        >>> path, synthetic = resolve_model("synthetic:tiny")
        >>> (path / "config.json").is_file(), synthetic
        (True, True)
    """
    model_id = str(model_id).strip()
    if not model_id:
        raise ModelError("empty model id; try --model openai/clip-vit-base-patch32 or --model " + STAND_IN)
    if model_id.startswith(SYNTHETIC_PREFIX):
        return build_synthetic(model_id[len(SYNTHETIC_PREFIX) :]), True
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"model directory {local} has no config.json (not a transformers CLIP model)")
        return local.resolve(), is_synthetic(local)
    if local.exists():
        raise ModelError(f"model path {local} is a file; expected a model directory or a hub id")
    if model_id.startswith((".", "/", "~")):
        raise ModelError(f"model directory {model_id} does not exist")
    if not _HUB_ID.match(model_id):
        raise ModelError(f"model '{model_id}' is neither an existing directory nor a valid hub model id")
    folder = _from_hub(model_id)
    return folder, is_synthetic(folder)


def _hash_files(files: Sequence[Path]) -> str:
    """Return the sha256 hex digest of the files' bytes, concatenated in the given order."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def weights_hash(path: Path) -> str:
    """Return 16 hex chars of the sha256 of a model folder's weight files, cached by file size and mtime.

    The digest is kept in a sidecar json under the cache (model folders may be read-only hub snapshots), so a
    600 MB checkpoint is read once; any change of size or mtime of a weight file invalidates it.

    Example:
        >>> path, _ = resolve_model("synthetic:tiny")
        >>> len(weights_hash(path))
        16
    """
    files = _weight_files(path)
    if not files:
        raise ModelError(f"model directory {path} has no weight files (*.safetensors or pytorch_model*.bin)")
    key = []
    for file in files:
        st = file.stat()  # follows hub-cache symlinks to the blob: its size/mtime are what matter
        key.append([file.name, st.st_size, st.st_mtime_ns])
    real = str(path.resolve())
    sidecar = cache_dir("hashes") / f"{hashlib.sha1(real.encode()).hexdigest()[:20]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if cached["path"] == real and cached["files"] == key:
            return str(cached["sha256"])[:16]
    full = _hash_files(files)
    record = {"path": real, "files": key, "sha256": full}
    # Atomic: a concurrent reader sees the old or the new record, never half of one. The sidecar only saves
    # time, so a cache that cannot take it (read-only, full) costs a re-hash next time, not the run.
    with contextlib.suppress(OSError, DiskFullError):
        atomic_write_json(sidecar, record, indent=None)
    return full[:16]


def arch_summary(config: Any) -> str:
    """Summarise a CLIPConfig's image tower, e.g. ``vit-768x12-p32-224/proj512`` for ViT-B/32.

    Example:
        >>> from autotune.models.synthetic import synthetic_config
        >>> arch_summary(synthetic_config("clip-vit-base-patch32"))
        'vit-768x12-p32-224/proj512'
    """
    vision = config.vision_config
    return (
        f"vit-{vision.hidden_size}x{vision.num_hidden_layers}-p{vision.patch_size}-{vision.image_size}"
        f"/proj{config.projection_dim}"
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
    files = _weight_files(path)
    use_safetensors = True if files and files[0].suffix == ".safetensors" else None
    try:
        with quiet_progress():
            model = CLIPModel.from_pretrained(path, dtype=dtype, use_safetensors=use_safetensors)
            processor = CLIPProcessor.from_pretrained(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"cannot load model '{model_id}' from {path}: {type(exc).__name__}: {first}"
        ) from exc
    try:
        # transformers wraps .to() with a signature mypy misreads; the call itself is plain nn.Module.to.
        model = cast(Any, model).to(device)
    except Exception as exc:  # e.g. "cuda" on a machine without it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
