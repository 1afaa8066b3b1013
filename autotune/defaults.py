"""The embedded defaults: a generated corpus and the offline models, so every command works out of the box."""

from __future__ import annotations

from pathlib import Path

from autotune.cache import cache_dir
from autotune.progress import ProgressFactory

DEFAULT_MODEL = "synthetic:clip-vit-base-patch32"  # ViT-B/32's exact architecture: valid for speed tuning
DEFAULT_DATASET_SIZE = 2000
DEFAULT_DATASET_SEED = 0


def default_dataset(
    n: int = DEFAULT_DATASET_SIZE, seed: int = DEFAULT_DATASET_SEED, progress: ProgressFactory | None = None
) -> Path:
    """The generated iNat-like corpus in the cache, made on first use (reported to ``progress``, if given)."""
    from autotune.data import make_dataset

    folder = cache_dir("datasets") / f"inat-like-n{n}-seed{seed}"
    marker = folder / "metadata.json"
    if not marker.is_file():
        if folder.exists():
            import shutil

            shutil.rmtree(folder)  # an interrupted generation: start again
        make_dataset(folder, n=n, seed=seed, progress=progress)
    return folder
