"""A shared study's pick, handed to every machine: published in the study's own storage, installed by each worker.

The worker that validates a shared study's pick saves it as its own profile and also writes it into the
study's storage (``profile:pick:<goal>``, a study user attribute, with whether it went in use): every worker
reaches that storage by definition, unlike the validating machine's disk. Every other worker of the same
machine id waits for it at the study's end and installs it as a profile of its own (in use where the
validating worker's was), and `autotune profile pull --storage URL` does the same later, on a machine that
joins afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.progress import Log, quiet
from autotune.tuner.profile import Profile, current_profile, machine_folder, save_profile, use_profile
from autotune.tuner.storage import reader_storage

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from optuna.study import Study

PICK_PREFIX = "profile:pick:"
POLL_S = 1.0


def pick_key(goal: int) -> str:
    """The study attribute the pick of a run of ``goal`` trials is published under."""
    return f"{PICK_PREFIX}{goal}"


@dataclass(frozen=True)
class Installed:
    """A published pick installed on this machine: the profile, its file, and whether it is in use here."""

    profile: Profile
    path: Path
    in_use: bool
    study: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"study": self.study, "id": self.profile.id, "machine_id": self.profile.machine_id,
                "model_arch": self.profile.model_arch, "config": self.profile.config.describe(),
                "validated_images_per_s": self.profile.validated_images_per_s, "in_use": self.in_use,
                "saved_by": self.profile.saved_by, "path": str(self.path)}  # fmt: skip


def publish_pick(study: Study, goal: int, profile: Profile, in_use: bool) -> None:
    """Write the saved pick into the study's storage, for the study's other workers and later pulls."""
    study.set_user_attr(pick_key(goal), {"profile": profile.to_dict(), "in_use": in_use})


def install(published: dict[str, Any], study: str) -> Installed | None:
    """Install a published pick as a profile of this machine (None when it is another machine id's).

    The profile keeps its id, so installing it twice (the validating machine itself, a second pull) saves no
    second copy; it goes in use where it went in use on the machine that validated it.
    """
    prof = Profile.from_dict(published["profile"])
    if prof.machine_id != detect_machine().machine_id:
        return None
    path = machine_folder(prof.machine_id) / f"{prof.id}.json"
    if not path.is_file():
        save_profile(prof, path=path)
    in_use = bool(published.get("in_use"))
    if in_use:
        now = current_profile(prof.machine_id, prof.model_arch)
        if now is None or now.id != prof.id:
            use_profile(prof.id)
    return Installed(prof, path, in_use, study)


def wait_for_pick(storage: RDBStorage, study_name: str, goal: int, limit_s: float) -> dict[str, Any] | None:
    """The pick another worker publishes for this run of the study, waited for at most ``limit_s`` seconds."""
    study_id = storage.get_study_id_from_name(study_name)
    deadline = time.monotonic() + limit_s
    while True:
        found = storage.get_study_user_attrs(study_id).get(pick_key(goal))
        if isinstance(found, dict) or time.monotonic() >= deadline:
            return found if isinstance(found, dict) else None
        time.sleep(POLL_S)


def receive_pick(storage: RDBStorage, study_name: str, goal: int, limit_s: float, say: Log) -> Installed | None:
    """Wait for the validating worker's pick and install it here; say what happened in one line."""
    say(f"waiting up to {limit_s:.0f} s for the validated pick, to install it on this machine too")
    published = wait_for_pick(storage, study_name, goal, limit_s)
    if published is None:
        say(f"the pick was not published within {limit_s:.0f} s: `autotune profile pull --storage URL` installs "
            "it later")  # fmt: skip
        return None
    got = install(published, study_name)
    if got is None:
        say("the validated pick is another machine id's: nothing to install here")
    else:
        say(f"installed the study's pick as profile {got.profile.id}" + (" (in use)" if got.in_use else ""))
    return got


def pull_picks(url: str, study_name: str | None = None, log: Log | None = None) -> list[Installed]:
    """Install every pick published in the storage at ``url`` for this machine id (the latest run's of each
    study; only ``study_name`` when given): what `autotune profile pull` does.

    Example:
        >>> [p.profile.id for p in pull_picks("postgresql+psycopg://db/autotune")]  # doctest: +SKIP
        ['20261208-031500-2c4e']
    """
    say = log or quiet
    storage = reader_storage(url)
    studies = storage.get_all_studies()
    names = [s.study_name for s in studies]
    if study_name is not None and study_name not in names:
        raise ConfigError(f"study {study_name!r} not found in {url} (studies: {', '.join(names) or 'none'})")
    out = []
    for summary in studies:
        if study_name is not None and summary.study_name != study_name:
            continue
        attrs = summary.user_attrs
        picks = [v for k, v in attrs.items() if k.startswith(PICK_PREFIX) and isinstance(v, dict)]
        if not picks:
            continue
        latest = max(picks, key=lambda v: str(v["profile"].get("id", "")))
        got = install(latest, summary.study_name)
        if got is not None:
            say(f"study {summary.study_name}: profile {got.profile.id}" + (" (in use)" if got.in_use else ""))
            out.append(got)
    return out
