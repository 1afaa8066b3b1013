"""Per-machine profiles: the best configuration found, with where it came from, kept as a history.

Layout under :func:`profiles_dir` (``$AUTOTUNE_STUDIES/profiles``)::

    <machine-id>/<id>.json      one file per saved pick, never overwritten; ids sort by save time
    <machine-id>/current.json   {architecture key: id in use}, with the readable architecture text
    <machine-id>.json           a format-1 (legacy) profile: listed, never made current automatically

A profile is only ever chosen for the model architecture it was tuned on: a speed measured on the small
demo CLIP says nothing about ViT-B/32, so ``find_profile("auto", model=...)`` returns None rather than
another architecture's profile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError

REFERENCE_IMAGES = 500_000  # iNaturalist 2021 train-mini
PROFILE_FORMAT = 2  # 1: one file per machine, overwritten by every study; 2: a history per machine
CURRENT_FILE = "current.json"
LEGACY_TAG = "legacy"  # last part of the id given to a format-1 file (it has none of its own)
_ID_RE = re.compile(rf"^\d{{8}}-\d{{6}}-(?:[0-9a-f]{{4,}}|{LEGACY_TAG})$")
_LOCK_TIMEOUT_S = 60.0
# Keys computed at save time, written for readers of the file, dropped again on load.
_DERIVED_KEYS = ("predicted_seconds_500k", "validation_ratio")


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
    scheduling (``dyn``: dynamic); ``1g/b64`` is one replica per GPU at batch 64.

    Example:
        >>> short_config(EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16, scheduling="static"))
        '1p 2x1/b16 st'
    """
    parts = [f"{config.producers}p"]
    if config.cpu_models:
        backend = "" if config.cpu_backend == "eager" else f" {config.cpu_backend}"
        parts.append(f"{config.cpu_models}x{config.cpu_threads}/b{config.cpu_batch}{backend}")
    if config.gpu_models:
        precision = "" if config.gpu_precision == "fp16" else f" {config.gpu_precision}"
        parts.append(f"{config.gpu_models}g/b{config.gpu_batch}{precision}")
    parts.append("st" if config.scheduling == "static" else "dyn")
    if config.pin_cores:
        parts.append("pin")
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
    """Versions of the libraries that change speed."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "optuna", "numpy", "pillow", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------- files


def machine_folder(machine_id: str, folder: Path | None = None) -> Path:
    """The history folder of one machine."""
    return (folder or profiles_dir()) / machine_id


def profile_path(profile: Profile, folder: Path | None = None) -> Path:
    """The file a saved profile lives in: its history file, or the legacy ``<machine-id>.json``.

    Example:
        >>> profile_path(prof)  # doctest: +SKIP
        PosixPath('studies/profiles/xeon-2c-8g-cpu-1a2b3c/20261128-102300-3fa9.json')
    """
    if profile.legacy:
        return (folder or profiles_dir()) / f"{profile.machine_id}.json"
    return machine_folder(profile.machine_id, folder) / f"{profile.id}.json"


def save_profile(
    profile: Profile,
    legacy_folder: Path | None = None,
    /,
    *,
    make_current: bool = True,
    folder: Path | None = None,
    path: Path | None = None,
) -> Path:
    """Save a profile atomically and return its file.

    Without ``path`` the profile becomes a new entry of its machine's history, ``<folder>/<machine-id>/<id>.json``
    (a fresh id when it has none, or when its id is already saved: history files are never overwritten),
    and with ``make_current`` the one in use for its model architecture. With ``path`` that single file is
    written, as is (``autotune verify`` writes back the file it read). ``legacy_folder`` is ``folder`` for
    callers that still pass it by position.

    Example:
        >>> path = save_profile(prof)  # doctest: +SKIP
        >>> find_profile("auto", model=prof.model).id == prof.id  # doctest: +SKIP
        True
    """
    now = dt.datetime.now(dt.UTC)
    profile.date = profile.date or now.isoformat(timespec="seconds")
    profile.saved_by = profile.saved_by or f"{socket.gethostname()}/{os.getpid()}"
    if path is not None:
        return atomic_write_json(path, profile.to_dict())
    folder = folder or legacy_folder
    home = machine_folder(profile.machine_id, folder)
    profile.format = PROFILE_FORMAT  # a legacy profile saved into the history joins it as format 2
    # A taken id would overwrite history; an id that is not ours (hand-edited) could point anywhere.
    while not _ID_RE.match(profile.id) or (home / f"{profile.id}.json").exists():
        profile.id = new_profile_id()
    target = atomic_write_json(home / f"{profile.id}.json", profile.to_dict())
    if make_current:
        _set_current(profile, folder)
    return target


def load_profile(path: Path) -> Profile:
    """Read a profile file; a missing or malformed file is one ConfigError line."""
    if not path.is_file():
        raise ConfigError(f"profile not found: {path}")
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(f"profile {path} is not valid: {exc}") from None


def _try_load(path: Path) -> Profile | None:
    """A readable profile file, or None (unreadable files are skipped by listings, not fatal)."""
    try:
        return load_profile(path)
    except ConfigError:
        return None


def _profile_files(folder: Path) -> list[Path]:
    """The ``*.json`` profile files of a folder, without atomic writes' temporaries and ``current.json``."""
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*.json")) if not p.name.startswith(".") and p.name != CURRENT_FILE]


@contextlib.contextmanager
def _current_lock(home: Path) -> Iterator[None]:
    """Hold the machine's ``current.json`` lock: two studies finishing together must not drop a pointer."""
    from filelock import FileLock, Timeout

    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / f".{CURRENT_FILE}.lock"))
    try:
        lock.acquire(timeout=_LOCK_TIMEOUT_S)
    except Timeout:  # a wedged holder: the write is atomic anyway, at worst one pointer update is lost
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _read_current(home: Path) -> dict[str, Any]:
    """The machine's ``current.json`` (an empty mapping when missing or unreadable: the history is intact)."""
    try:
        data = json.loads((home / CURRENT_FILE).read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("current"), dict):
        data = {"format": PROFILE_FORMAT, "machine_id": home.name, "current": {}}
    return data


def _current_ids(home: Path) -> dict[str, str]:
    """Architecture key -> id in use, keeping only well-formed entries."""
    out = {}
    for key, entry in _read_current(home)["current"].items():
        pid = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(pid, str) and _ID_RE.match(pid):
            out[key] = pid
    return out


def _set_current(profile: Profile, folder: Path | None) -> None:
    """Point the profile's machine and architecture at it."""
    home = machine_folder(profile.machine_id, folder)
    with _current_lock(home):
        data = _read_current(home)
        data["current"][profile.arch_key] = {
            "id": profile.id,
            "arch": profile.model_arch,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(home / CURRENT_FILE, data)


def _legacy_id(profile: Profile, path: Path) -> str:
    """A sortable id for a format-1 file: its save date (or the file's time), tagged ``legacy``."""
    try:
        when = dt.datetime.fromisoformat(profile.date)
    except ValueError:
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return f"{when:%Y%m%d-%H%M%S}-{LEGACY_TAG}"


# ------------------------------------------------------------------------------------------- history


def _machine_history(home: Path, legacy_file: Path) -> list[tuple[Profile, bool]]:
    """One machine's history entries (with the in-use flag) and its legacy file, unsorted."""
    current = _current_ids(home)
    out: list[tuple[Profile, bool]] = []
    for path in _profile_files(home):
        prof = _try_load(path)
        if prof is None or not _ID_RE.match(path.stem):
            continue
        prof.id = path.stem  # the file name is what current.json points at
        out.append((prof, current.get(prof.arch_key) == prof.id))
    legacy = _try_load(legacy_file) if legacy_file.is_file() else None
    if legacy is not None:
        legacy.id = legacy.id or _legacy_id(legacy, legacy_file)
        if all(p.id != legacy.id for p, _ in out):  # not yet imported by `use`
            out.append((legacy, False))
    return out


def history(machine_id: str | None = None, folder: Path | None = None) -> list[tuple[Profile, bool]]:
    """Saved profiles, newest first, each with whether it is in use for its architecture.

    ``machine_id`` None lists every machine. Unreadable files are skipped; a format-1
    ``<machine-id>.json`` is listed with ``profile.legacy`` set and never in use.

    Example:
        >>> for prof, in_use in history(detect_machine().machine_id):  # doctest: +SKIP
        ...     print(prof.id, "*" if in_use else "", prof.model_arch, prof.validated_images_per_s)
    """
    root = folder or profiles_dir()
    if machine_id is not None:
        ids = [machine_id]
    elif root.is_dir():
        ids = sorted(
            {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            | {p.stem for p in _profile_files(root)}
        )
    else:
        ids = []
    entries = [e for mid in ids for e in _machine_history(root / mid, root / f"{mid}.json")]
    return sorted(entries, key=lambda e: e[0].id, reverse=True)


def list_profiles(folder: Path | None = None) -> list[Profile]:
    """Every readable profile of every machine, by machine then id (oldest first)."""
    return sorted((p for p, _ in history(None, folder)), key=lambda p: (p.machine_id, p.id))


def _by_id(profile_id: str, folder: Path | None = None) -> Profile | None:
    """The saved profile with this id (any machine), or None."""
    if not _ID_RE.match(profile_id):
        return None
    return next((p for p, _ in history(None, folder) if p.id == profile_id), None)


def current_profile(machine_id: str, arch: str, folder: Path | None = None) -> Profile | None:
    """The profile in use on a machine for a model architecture (a :func:`model_arch` string), or None.

    Example:
        >>> current_profile(detect_machine().machine_id, model_arch("synthetic:tiny"))  # doctest: +SKIP
    """
    home = machine_folder(machine_id, folder)
    pid = _current_ids(home).get(arch_key(arch))
    prof = _try_load(home / f"{pid}.json") if pid else None
    if prof is None or prof.model_arch != arch:  # the key is a hash: never hand out another architecture's
        return None
    prof.id = pid or prof.id
    return prof


def _latest_current(machine_id: str, folder: Path | None = None) -> Profile | None:
    """The most recently saved of a machine's current profiles (for callers with no model at hand)."""
    home = machine_folder(machine_id, folder)
    for pid in sorted(_current_ids(home).values(), reverse=True):
        prof = _try_load(home / f"{pid}.json")
        if prof is not None:
            prof.id = pid
            return prof
    return None


def use_profile(profile_id: str, folder: Path | None = None) -> Profile:
    """Make a saved profile the one in use for its machine and model architecture; return it.

    A legacy (format-1) profile is first copied into its machine's history under its legacy id.

    Example:
        >>> use_profile("20261128-102300-3fa9").model_arch  # doctest: +SKIP
        'vit-768x12-p32-224/proj512'
    """
    prof = _by_id(profile_id, folder)
    if prof is None:
        raise ConfigError(f"no saved profile has id {profile_id!r}: `autotune profile list` shows the ids")
    if prof.legacy:
        save_profile(prof, make_current=True, folder=folder)
    else:
        _set_current(prof, folder)
    return prof


# ------------------------------------------------------------------------------------------- choosing


def check_profile(profile: Profile, *, machine_id: str | None = None, model_arch: str | None = None) -> list[str]:
    """Notes for a profile used away from where it was tuned (another machine or model architecture)."""
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


def _print_note(note: str) -> None:
    """One ``note:`` line on stderr (for callers that pass no ``say``)."""
    print(f"note: {note}", file=sys.stderr)


def _load_spec(spec: str) -> Profile:
    """A profile named by a file path or a saved id; anything else is one ConfigError line."""
    path = Path(spec)
    if path.is_file():
        return load_profile(path)
    prof = _by_id(spec)
    if prof is None:
        raise ConfigError(
            f"profile not found: {spec} (give a profile file, an id from `autotune profile list`, auto or none)"
        )
    return prof


def find_profile(
    spec: str | None,
    *,
    model: str | None = None,
    warn: bool = True,
    say: Callable[[str], None] | None = None,
) -> Profile | None:
    """Resolve ``none``, ``auto``, a saved profile id or a profile file.

    ``auto`` is this machine's profile in use for ``model``'s architecture (None when that architecture
    was never tuned here: never another architecture's profile); without ``model``, the most recently
    saved of this machine's current profiles. A file or id tuned on another machine or architecture is
    still returned, with a one-line note per difference passed to ``say`` (or printed on stderr when no
    ``say`` is given); ``warn=False`` keeps quiet.

    Example:
        >>> prof = find_profile("auto", model="synthetic:tiny", say=print)  # doctest: +SKIP
        >>> prof is None or prof.model_arch == model_arch("synthetic:tiny")  # doctest: +SKIP
        True
    """
    if spec in (None, "none"):
        return None
    from autotune.machine import detect_machine

    machine_id = detect_machine().machine_id
    if spec == "auto":
        if model is None:
            return _latest_current(machine_id)
        return current_profile(machine_id, model_arch(model))
    prof = _load_spec(spec)
    if warn:
        arch = model_arch(model) if model else None
        for note in check_profile(prof, machine_id=machine_id, model_arch=arch):
            (say or _print_note)(note)
    return prof
