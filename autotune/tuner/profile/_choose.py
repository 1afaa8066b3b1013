"""Choosing a profile: ``none``, ``auto`` (this machine's, for the model's architecture), an id or a file.

A profile is only ever chosen for the model architecture it was tuned on: a speed measured on the small
demo CLIP says nothing about ViT-B/32, so ``find_profile("auto", model=...)`` returns None rather than
another architecture's profile.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.profile._profile import Profile
from autotune.tuner.profile._store import _by_id, _latest_current, current_profile, load_profile


def check_profile(profile: Profile, *, machine_id: str | None = None, model_arch: str | None = None) -> list[str]:
    """Notes for a profile used away from where it was tuned (another machine or model architecture).

    Example:
        >>> check_profile(prof, machine_id=prof.machine_id, model_arch=prof.model_arch)  # doctest: +SKIP
        []
    """
    notes = []
    if machine_id and profile.machine_id != machine_id:
        notes.append(f"profile was tuned on machine {profile.machine_id}, this is {machine_id}")
    if model_arch and profile.model_arch and profile.model_arch != model_arch:
        notes.append(f"profile was tuned for model architecture {profile.model_arch}, this model is {model_arch}")
    return notes


def model_arch(model_id: str) -> str:
    """Architecture summary of a model from its config alone (no weights loaded).

    Example:
        >>> model_arch("fake:32"), model_arch("openai/clip-vit-base-patch32")  # doctest: +SKIP
        ('fake:32', 'vit-768x12-p32-224/proj512')
    """
    if model_id.startswith("fake:"):
        return model_id
    # From the model's facts, cached beside its config: reading the config through transformers (and importing
    # torch) cost every study, retrieval and profile command seconds, for five numbers.
    from autotune.models.facts import model_facts

    return model_facts(model_id).arch


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
