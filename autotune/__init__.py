"""clip-autotune: an auto-tuning performance harness for CLIP text-to-image retrieval."""

from __future__ import annotations

__version__ = "0.1.0"

from autotune.errors import AutotuneError, BadImageError, ConfigError, DataError, ModelError

__all__ = ["AutotuneError", "BadImageError", "ConfigError", "DataError", "ModelError", "__version__"]
