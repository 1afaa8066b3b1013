"""Where clip-autotune keeps things it builds once: stand-in models, compiled backends."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the cache root, ``$AUTOTUNE_CACHE`` or ``~/.cache/clip-autotune``."""
    root = Path(os.environ.get("AUTOTUNE_CACHE") or Path.home() / ".cache" / "clip-autotune")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
