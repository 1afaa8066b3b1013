"""Per-machine profiles: the best configuration found, with where it came from."""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError

REFERENCE_IMAGES = 500_000  # iNaturalist 2021 train-mini


def studies_dir() -> Path:
    """Where studies and profiles live: ``$AUTOTUNE_STUDIES`` or ``./studies``."""
    return Path(os.environ.get("AUTOTUNE_STUDIES", "studies"))


def profiles_dir() -> Path:
    """Folder of per-machine profiles."""
    return studies_dir() / "profiles"


@dataclass
class Profile:
    """The tuned configuration for one machine, and its provenance.

    Example:
        >>> prof = load_profile(profiles_dir() / "my-machine.json")
        >>> prof.config.describe(), prof.images_per_s
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

    @property
    def predicted_seconds_500k(self) -> float:
        """Predicted time of a 500,000-image scan at the measured steady-state rate."""
        return REFERENCE_IMAGES / self.images_per_s if self.images_per_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the prediction."""
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["predicted_seconds_500k"] = round(self.predicted_seconds_500k, 1)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Rebuild from :meth:`to_dict` output."""
        data = dict(data)
        data.pop("predicted_seconds_500k", None)
        data["config"] = EngineConfig.from_dict(data["config"])
        return cls(**data)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change speed."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "optuna", "numpy", "pillow", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_profile(profile: Profile, folder: Path | None = None, *, path: Path | None = None) -> Path:
    """Write ``<folder>/<machine-id>.json`` (or ``path``) atomically and return its path."""
    path = path or (folder or profiles_dir()) / f"{profile.machine_id}.json"
    profile.date = profile.date or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # A unique temporary name: two processes saving the same profile no longer share (and tear) one ".tmp".
    return atomic_write_json(path, profile.to_dict())


def load_profile(path: Path) -> Profile:
    """Read a profile file; a missing or malformed file is one ConfigError line."""
    if not path.is_file():
        raise ConfigError(f"profile not found: {path}")
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(f"profile {path} is not valid: {exc}") from None


def list_profiles(folder: Path | None = None) -> list[Profile]:
    """Every readable profile in the folder."""
    folder = folder or profiles_dir()
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name.startswith("."):  # an atomic write's temporary file (in flight or left by a kill)
            continue
        try:
            out.append(load_profile(path))
        except ConfigError:
            continue
    return out


def check_profile(profile: Profile, *, machine_id: str | None = None, model_arch: str | None = None) -> list[str]:
    """Warnings for a profile used away from where it was tuned (another machine or model architecture)."""
    notes = []
    if machine_id and profile.machine_id != machine_id:
        notes.append(f"profile was tuned on machine {profile.machine_id}, this is {machine_id}")
    if model_arch and profile.model_arch and profile.model_arch != model_arch:
        notes.append(f"profile was tuned for model architecture {profile.model_arch}, this model is {model_arch}")
    return notes


def model_arch(model_id: str) -> str:
    """Architecture summary of a model from its config alone (no weights loaded)."""
    if model_id.startswith("fake:"):
        return model_id
    from transformers import CLIPConfig

    from autotune.models.loading import arch_summary, resolve_model

    path, _ = resolve_model(model_id)
    return str(arch_summary(CLIPConfig.from_pretrained(str(path))))


def find_profile(spec: str | None, *, model: str | None = None, warn: bool = True) -> Profile | None:
    """Resolve ``auto`` (this machine's profile, if any) or a file path; warn when it was tuned elsewhere."""
    if spec in (None, "none"):
        return None
    from autotune.machine import detect_machine

    machine_id = detect_machine().machine_id
    if spec == "auto":
        path = profiles_dir() / f"{machine_id}.json"
        if not path.is_file():
            return None
    else:
        path = Path(spec)
    prof = load_profile(path)
    if warn:
        arch = model_arch(model) if model else None
        for note in check_profile(prof, machine_id=machine_id, model_arch=arch):
            warnings.warn(note, stacklevel=2)
    return prof
