"""The profile record: the best configuration found on one machine for one model architecture, and its
provenance; ids, compact labels, and the prediction of a 500,000-image scan."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.models import backends

# The one definition of the reference database size predictions are quoted for.
REFERENCE_IMAGES = 500_000  # iNaturalist 2021 train-mini
PROFILE_FORMAT = 2  # 1: one file per machine, overwritten by every study; 2: a history per machine
LEGACY_TAG = "legacy"  # last part of the id given to a format-1 file (it has none of its own)
_ID_RE = re.compile(rf"^\d{{8}}-\d{{6}}-(?:[0-9a-f]{{4,}}|{LEGACY_TAG})$")
# Keys computed at save time, written for readers of the file, dropped again on load.
_DERIVED_KEYS = ("predicted_seconds_500k", "validation_ratio")
# The libraries whose versions change a scan's speed (recorded with every profile).
_SPEED_LIBRARIES = ("torch", "transformers", "optuna", "numpy", "pillow", "onnxruntime")


def studies_dir() -> Path:
    """Where studies and profiles live: ``$AUTOTUNE_STUDIES`` or ``./studies``."""
    return Path(os.environ.get("AUTOTUNE_STUDIES", "studies"))


def profiles_dir() -> Path:
    """Folder of per-machine profiles."""
    return studies_dir() / "profiles"


def arch_key(arch: str) -> str:
    """A short stable key for a model architecture string (the key of ``current.json``).

    Example:
        >>> arch_key("vit-768x12-p32-224/proj512") == arch_key("vit-768x12-p32-224/proj512")
        True
        >>> len(arch_key("fake:32"))
        8
    """
    return hashlib.sha256(arch.encode("utf-8")).hexdigest()[:8]


def arch_short(arch: str) -> str:
    """A compact label of an architecture for tables and one-line messages (``?`` when unknown).

    Example:
        >>> arch_short("vit-768x12-p32-224/proj512")
        'vit768x12p32'
        >>> arch_short("fake:32"), arch_short("")
        ('fake:32', '?')
    """
    match = re.fullmatch(r"vit-(\d+)x(\d+)-p(\d+)-\d+/proj\d+", arch)
    if match:
        return "vit{}x{}p{}".format(*match.groups())
    return arch[:12] or "?"


def short_config(config: EngineConfig) -> str:
    """A compact engine configuration for an 80-column table; defaults (eager, fp16) are left out.

    ``1p 2x1/b16 int8 st`` reads: 1 producer, 2 CPU replicas x 1 thread, batch 16, int8 backend, static
    scheduling (``dyn``: dynamic); ``1x2s2`` is one replica of 2 threads in 2 streams; ``rpin``: replicas
    pinned; ``1g/b64`` is one replica per GPU at batch 64.

    Example:
        >>> short_config(EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16, scheduling="static"))
        '1p 2x1/b16 st'
    """
    parts = [f"{config.producers}p"]
    if config.cpu_models:
        backend = "" if config.cpu_backend == "eager" else f" {config.cpu_backend}"
        streams = f"s{config.cpu_streams}" if config.cpu_streams > 1 else ""
        parts.append(f"{config.cpu_models}x{config.cpu_threads}{streams}/b{config.cpu_batch}{backend}")
    if config.gpu_models:
        precision = "" if config.gpu_precision == "fp16" else f" {config.gpu_precision}"
        backend = "" if config.gpu_backend == "eager" else f" {config.gpu_backend}"
        parts.append(f"{config.gpu_models}g/b{config.gpu_batch}{precision}{backend}")
    if config.decode == "gpu":
        parts.append("gdec")
    parts.append("st" if config.scheduling == "static" else "dyn")
    if config.pin_cores:
        parts.append("pin")
    if config.pin_replicas:
        parts.append("rpin")
    return " ".join(parts)


def new_profile_id(now: dt.datetime | None = None) -> str:
    """A fresh profile id that sorts by save time (UTC), e.g. ``20261128-102300-3fa9``.

    The last part is the microsecond in 16 us steps, in hex: saves within one second still sort in order.

    Example:
        >>> new_profile_id(dt.datetime(2026, 11, 28, 10, 23, 0, 250_000, tzinfo=dt.UTC))
        '20261128-102300-3d09'
    """
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond >> 4:04x}"


def predict_seconds(images: int, images_per_s: float, overhead_s: float = 0.0) -> float:
    """Seconds a scan of ``images`` images takes after start-up: the steady rate plus warm-up and drain."""
    return images / images_per_s + overhead_s if images_per_s > 0 else float("inf")


@dataclass
class Profile:
    """The tuned configuration for one machine and model architecture, and its provenance.

    ``images_per_s`` is the figure predictions use; ``trial_images_per_s`` is what the study's trials
    measured and ``validated_images_per_s`` the median of the validation runs (raw runs in ``validation``).

    Example:
        >>> prof = find_profile("auto", model="openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> prof.id, prof.config.describe(), prof.validated_images_per_s, prof.validation_ratio  # doctest: +SKIP
    """

    machine_id: str
    machine: str
    config: EngineConfig
    images_per_s: float
    spread: float
    study: str
    storage: str
    trial: int
    scan_size: int
    model: str
    model_arch: str
    dataset: str
    dataset_fingerprint: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    rechecks: list[float] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)
    # One-off costs of the best trial (process spawn, model load, backend export/compile), apart from images/s.
    startup_s: float | None = None
    backend_setup: dict[str, Any] = field(default_factory=dict)
    # Format 2. Defaults let format-1 files load; from_dict marks those as format 1.
    format: int = PROFILE_FORMAT
    id: str = ""
    trial_images_per_s: float | None = None
    validated_images_per_s: float | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    unstable: bool = False
    saved_by: str = ""
    # Seconds a scan takes beyond its images at the steady rate (warm-up and drain rounds), from validation.
    overhead_s: float = 0.0
    # Where the study that saved it spent its time: setup, search, final, validation, save.
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def predicted_seconds_500k(self) -> float:
        """Predicted time of a 500,000-image scan at the measured steady-state rate."""
        return predict_seconds(REFERENCE_IMAGES, self.images_per_s, self.overhead_s)

    def predicted_images_per_s(self, images: int) -> float:
        """Predicted images/s of a scan of ``images`` images (start-up excluded, as `retrieve` reports it)."""
        return images / predict_seconds(images, self.images_per_s, self.overhead_s)

    @property
    def validation_ratio(self) -> float | None:
        """Trial figure over validated figure (above 1: the trials were optimistic); None unless both known."""
        if self.trial_images_per_s is None or not self.validated_images_per_s:
            return None
        return self.trial_images_per_s / self.validated_images_per_s

    @property
    def legacy(self) -> bool:
        """Whether this was read from a format-1 file (``<machine-id>.json``, before histories)."""
        return self.format < 2

    @property
    def arch_key(self) -> str:
        """The key of this profile's architecture in ``current.json``."""
        return arch_key(self.model_arch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the prediction and the validation ratio."""
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["predicted_seconds_500k"] = round(self.predicted_seconds_500k, 1)
        ratio = self.validation_ratio
        data["validation_ratio"] = None if ratio is None else round(ratio, 3)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Rebuild from :meth:`to_dict` output (or a format-1 file, which has no ``format`` key)."""
        data = dict(data)
        for key in _DERIVED_KEYS:
            data.pop(key, None)
        data.setdefault("format", 1)
        if not isinstance(data["format"], int) or data["format"] > PROFILE_FORMAT:
            raise ConfigError(f"format {data['format']!r} is newer than this autotune reads ({PROFILE_FORMAT})")
        data["config"] = EngineConfig.from_dict(data["config"])
        return cls(**data)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change speed (those installed).

    Example:
        >>> "numpy" in library_versions()  # doctest: +SKIP
        True
    """
    return backends.library_versions(*_SPEED_LIBRARIES)
