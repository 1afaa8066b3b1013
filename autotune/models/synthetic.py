"""Offline stand-in CLIP models: the real architecture with random weights, built once into the cache."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotune.atomic import TMP_MARK, fsync_dir, fsync_tree, raise_if_disk_full
from autotune.cache import cache_dir
from autotune.errors import ModelError, one_line

SYNTHETIC_PREFIX = "synthetic:"
MARKER_FILE = "autotune_synthetic.json"
MARKER_NOTE = "random weights: rankings are meaningless"

# The OpenAI CLIP normalisation constants (the real preprocessor_config.json of openai/clip-vit-base-patch32).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architectures, as CLIPConfig keyword arguments. "clip-vit-base-patch32" is exactly
# openai/clip-vit-base-patch32; "tiny" keeps its structure (patch 32 at 224 px, real vocabulary and
# context) at widths that run in milliseconds.
_VARIANTS: dict[str, dict[str, Any]] = {
    "clip-vit-base-patch32": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "text": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        },
        "projection_dim": 512,
    },
    "tiny": {
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "projection_dim": 32,
    },
}

# Serialises seeded initialisation: torch's default generator is process-global.
_INIT_LOCK = threading.Lock()

# Files a finished build must hold: a folder missing one is a crashed/foreign build and is rebuilt.
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER_FILE,
)


def variants() -> list[str]:
    """Return the names of the synthetic variants (``synthetic:<name>``).

    Example:
        >>> variants()
        ['clip-vit-base-patch32', 'tiny']
    """
    return list(_VARIANTS)


def synthetic_config(name: str) -> Any:
    """Return the ``transformers.CLIPConfig`` of a synthetic variant (ModelError for an unknown name).

    Example:
        >>> synthetic_config("clip-vit-base-patch32").vision_config.hidden_size
        768
    """
    from transformers import CLIPConfig

    spec = _VARIANTS.get(name)
    if spec is None:
        raise ModelError(
            f"unknown synthetic model {SYNTHETIC_PREFIX}{name}; variants: "
            + ", ".join(SYNTHETIC_PREFIX + v for v in _VARIANTS)
        )
    proj = spec["projection_dim"]
    text_config = {
        **spec["text"],
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": proj,
        # Current hub ids: pooling takes the first <|endoftext|> (also the tokenizer's pad).
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }
    vision_config = {
        **spec["vision"],
        "image_size": 224,
        "patch_size": 32,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "projection_dim": proj,
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=proj,
        logit_scale_init_value=2.6592,
    )


def is_synthetic(path_or_id: str | os.PathLike[str]) -> bool:
    """Whether a model id (``synthetic:...``) or a folder (holding the marker file) is a random stand-in.

    Example:
        >>> is_synthetic("synthetic:tiny"), is_synthetic("openai/clip-vit-base-patch32")
        (True, False)
    """
    text = os.fspath(path_or_id)
    if text.startswith(SYNTHETIC_PREFIX):
        return True
    try:
        return (Path(text) / MARKER_FILE).is_file()
    except OSError:  # a hub id can be an invalid path on some systems
        return False


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load tqdm bars ("Loading weights"), then restore the caller's setting."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from huggingface_hub.utils import disable_progress_bars as hub_disable
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
            if hub_was_disabled:
                hub_disable()


def _is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every file of a finished build."""
    return folder.is_dir() and all((folder / f).is_file() for f in _REQUIRED_FILES)


def _image_processor() -> Any:
    """Return an image processor with openai/clip-vit-base-patch32's settings (PIL without torchvision)."""
    settings: dict[str, Any] = {
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    }
    processor_cls: Any
    try:
        import torchvision  # noqa: F401
        from transformers import CLIPImageProcessor as processor_cls
    except ImportError:
        # transformers 5's CLIPImageProcessor is torchvision-backed and falls back (with a warning)
        # without it; asking for the PIL backend directly gives the same saved config without the noise.
        from transformers import CLIPImageProcessorPil as processor_cls
    return processor_cls(**settings)


def _write(folder: Path, name: str, seed: int) -> None:
    """Build the model, processor, tokenizer and marker of one variant into ``folder``."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from autotune.models.tokenizer import build_offline_tokenizer

    config = synthetic_config(name)
    # fork_rng restores the caller's global RNG state afterwards; the lock keeps two threads building at
    # once from drawing from each other's seeded stream (the weights must depend on the seed alone).
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    with quiet_progress():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer = build_offline_tokenizer(folder)
    # The hub repo's layout (preprocessor_config.json + tokenizer files), not transformers 5's single
    # processor_config.json: older transformers and other tools only read the former.
    image_processor = _image_processor()
    image_processor.save_pretrained(folder)
    CLIPProcessor(
        image_processor=image_processor, tokenizer=tokenizer
    )  # fails here, not at load, if they clash
    marker = {"variant": name, "seed": seed, "note": MARKER_NOTE}
    # Written last: its presence (with the other files) is what marks the build complete.
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    _relax_permissions(folder)


def _relax_permissions(folder: Path) -> None:
    """Give the build umask permissions (mkdtemp and safetensors create owner-only 0700/0600 entries)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for entry in folder.iterdir():
        if entry.is_file():
            entry.chmod(0o666 & ~umask)


def build_synthetic(name: str, seed: int = 0) -> Path:
    """Build (once) the random-weight stand-in ``name``; return its folder, loadable by ``from_pretrained``.

    The folder is ``cache_dir("models", f"synthetic-{name}-seed{seed}")``; it is written into a temporary
    sibling and renamed into place, so concurrent builds never expose a half-written model and a complete
    folder is reused as is.

    Example:
        >>> path = build_synthetic("tiny")
        >>> sorted(p.name for p in path.iterdir())[:2]
        ['autotune_synthetic.json', 'config.json']
    """
    if name not in _VARIANTS:
        synthetic_config(name)  # raises the ModelError listing the variants
    try:
        final = cache_dir("models") / f"synthetic-{name}-seed{seed}"
        if _is_complete(final):
            return final
        # The TMP_MARK in the name lets remove_leftovers recognise the folder of a killed build.
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}", dir=final.parent))
    except OSError as exc:  # read-only or missing cache root
        raise ModelError(f"cannot build {SYNTHETIC_PREFIX}{name}: cache folder not writable: {exc}") from exc
    try:
        try:
            _write(tmp, name, seed)
            # Data on disk before the rename publishes it: after a power cut the folder is whole or absent.
            fsync_tree(tmp)
        except ModelError:
            raise
        except Exception as exc:  # disk full, permissions...: one line for the user
            if isinstance(exc, OSError):
                raise_if_disk_full(exc, final)
            first = one_line(exc)
            raise ModelError(f"cannot build {SYNTHETIC_PREFIX}{name}: {type(exc).__name__}: {first}") from exc
        _publish(tmp, final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(final):
        raise ModelError(f"cannot build {SYNTHETIC_PREFIX}{name}: {final} is incomplete after the build")
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place; if another process won the race, keep its complete folder."""
    for _attempt in range(3):
        try:
            # rename() onto a non-empty directory fails on POSIX: exactly the "someone else won" case.
            os.rename(tmp, final)
            return
        except OSError:
            if _is_complete(final):
                return
            if final.exists():
                # A leftover incomplete folder (an old crash): move it aside, then retry.
                stale = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
                try:
                    os.rename(final, stale)
                except OSError:
                    continue
                shutil.rmtree(stale, ignore_errors=True)
    if not _is_complete(final):
        raise ModelError(f"cannot publish the synthetic model into {final}")
