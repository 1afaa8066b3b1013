"""Profile storage: each machine's history of saved profiles and its pointers to the ones in use.

Layout under :func:`profiles_dir` (``$AUTOTUNE_STUDIES/profiles``)::

    <machine-id>/<id>.json      one file per saved pick, never overwritten; ids sort by save time
    <machine-id>/current.json   {architecture key: id in use}, with the readable architecture text
    <machine-id>.json           a format-1 (legacy) profile: listed, never made current automatically
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.errors import ConfigError
from autotune.tuner.profile._profile import (
    _ID_RE,
    LEGACY_TAG,
    PROFILE_FORMAT,
    Profile,
    arch_key,
    new_profile_id,
    profiles_dir,
)

CURRENT_FILE = "current.json"
_LOCK_TIMEOUT_S = 60.0


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
    from filelock import FileLock, Timeout  # here, not at the top: only saves pay for it, listings never do

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


def best_unused(machine_id: str, arch: str, folder: Path | None = None) -> Profile | None:
    """The fastest saved profile of a machine and architecture that is not in use (by its validated figure,
    else its trial figure), or None: what a retrieval falling back to the safe default should name."""
    unused = [p for p, in_use in history(machine_id, folder) if not in_use and p.model_arch == arch]
    return max(unused, key=lambda p: p.validated_images_per_s or p.images_per_s, default=None)


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
