"""What a study is asked for (:class:`StudyOptions`) and what that resolves to before the first trial.

Resolving fixes the machine, the search space, the workload and the measurement rule, and derives the
study's identity from them, so that trials measured under another rule, model or data are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.data import open_source
from autotune.data.sources import ImageSource
from autotune.defaults import DEFAULT_MODEL, default_dataset
from autotune.engine.runner import preprocess_spec_for
from autotune.errors import ConfigError
from autotune.machine import MachineInfo, detect_machine
from autotune.models.guard import DEFAULT_THRESHOLD
from autotune.progress import ProgressFactory
from autotune.tuner.objective import ScanSpec
from autotune.tuner.profile import model_arch
from autotune.tuner.space import SearchSpace, load_space
from autotune.tuner.storage import HEARTBEAT_S, default_storage


@dataclass(kw_only=True)
class StudyOptions:
    """Everything `autotune study` takes; defaults work out of the box on the embedded data and model."""

    device: str = "cpu"
    trials: int = 20
    timeout_s: float | None = None
    scan_size: int | None = None  # cap on one trial's images; None: derived from the space
    rounds: int = 4  # timed batch rounds per trial
    min_timed_images: int = 96  # ... or more rounds, until the timed part holds this many images
    validate_rounds: int = 12  # the most timed rounds of one final or validation run (sized from the budget)
    validate_repeats: int = 5  # the fewest interleaved pairs of pick and baseline (0: no validation); see validation
    finalists: int = 3  # best kinds (backend x layout) whose best trials meet in the final (1: no final)
    final_repeats: int = 2  # interleaved runs of each finalist (0: no final, the best trial is the pick)
    space: str | None = None
    storage: str | None = None
    study_name: str | None = None
    model: str | None = None
    dataset: str | None = None
    image_column: str | None = None
    split: str | None = None
    sampler: str = "tpe"
    patience: int | None = None
    trial_timeout_s: float = 600.0
    seed: int = 0
    save: bool = True
    save_profile: bool = False  # make the pick the profile in use even if it validates slower
    guard_threshold: float = DEFAULT_THRESHOLD
    guard_sample: int = 256
    heartbeat_s: float = HEARTBEAT_S  # a running trial's heartbeat; silent for 4 beats: its worker is dead
    fake_delay_s: float = 0.0  # seconds slept per image by ``fake:`` models (tests of slow replicas); else unused


@dataclass
class StudySetup:
    """What a study needs before its first trial: machine, space, workload, identity."""

    machine: MachineInfo
    space: SearchSpace
    model: str
    arch: str
    dataset: str
    source: ImageSource
    spec: ScanSpec
    trial_images: int
    signature: dict[str, Any]
    name: str
    url: str


def _slug(text: str) -> str:
    """Lower-case, dash-separated, short."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def default_study_name(machine_id: str, space: str, model: str, dataset_fp: str) -> str:
    """Derived from machine id, space (the device mix for built-in spaces), model and dataset content, so the
    same command resumes the same study, and identical machines holding the same data share it."""
    return f"{machine_id}.{_slug(space)}.{_slug(model)}.{dataset_fp[:8]}"


def model_identity(model: str) -> str:
    """The model as a study name may carry it: a hub or synthetic id as given; a local folder by its weights.

    A folder's path differs between machines that hold the same model; its folder name and weights hash do not.
    """
    local = Path(model).expanduser()
    if not model.startswith(("synthetic:", "fake:")) and local.is_dir():
        from autotune.models.facts import weights_hash  # hashes the weights once, then cached by size and mtime

        return f"{local.resolve().name}-{weights_hash(local.resolve())[:8]}"
    return model


def max_trial_images(space: SearchSpace, spec: ScanSpec, gpus: int) -> int:
    """The most images any configuration of ``space`` needs for one trial (largest batch round)."""
    cpu = int(space.largest("cpu_models", 1)) * int(space.largest("cpu_batch", 32))
    gpu = gpus * int(space.largest("gpu_models", 0)) * int(space.largest("gpu_batch", 128))
    size = cpu + gpu
    # Smaller rounds get more timed rounds (min_timed_images), overshooting it by less than one round: the
    # largest round bounds both parts.
    timed = max(size * spec.rounds, spec.min_timed_images + size - 1 if spec.min_timed_images else 0)
    return size * (spec.warmup_rounds + spec.drain_rounds) + timed


def _scan_spec(options: StudyOptions, dataset: str, model: str) -> ScanSpec:
    """The measurement rule of every trial."""
    return ScanSpec(
        dataset=dataset,
        model=model,
        rounds=options.rounds,
        min_timed_images=options.min_timed_images,
        scan_size=options.scan_size,
        timeout_s=options.trial_timeout_s,
        image_column=options.image_column,
        split=options.split,
        fake_delay_s=options.fake_delay_s,
    )


def _study_name(options: StudyOptions, setup_id: tuple[str, str, str, str], signature: dict[str, Any]) -> str:
    """The given name, or one derived from (machine id, space, model, dataset fingerprint) and the signature."""
    if options.study_name is not None:
        return options.study_name
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:6]
    return f"{default_study_name(*setup_id)}.m{digest}"


def prepare_study(options: StudyOptions, progress: ProgressFactory | None = None) -> StudySetup:
    """Load the space, open the data, fix the measurement rule, and refuse a scan size too small for it.

    ``progress`` reports the generation of the embedded corpus when no dataset is given and it is not built yet.
    """
    machine = detect_machine()
    space = load_space(
        options.space or options.device,
        machine_facts=machine.facts(),
        device=options.device if options.space is None else None,
    )
    if options.rounds < 2:
        raise ConfigError(f"--rounds must be at least 2 (got {options.rounds}): one round is all noise")
    model = options.model or DEFAULT_MODEL
    # May build the embedded data set: after the checks.
    dataset = options.dataset or str(default_dataset(progress=progress))
    source = open_source(dataset, options.image_column, options.split)
    spec = _scan_spec(options, dataset, model)
    need = max_trial_images(space, spec, machine.gpu_count)
    if options.scan_size is not None and options.scan_size < need:
        raise ConfigError(
            f"--scan-size {options.scan_size} is too small for part of the space {space.name}: its largest "
            f"batch rounds need {need} images per trial ({spec.rounds} timed rounds plus warm-up and drain); "
            f"pass --scan-size {need} or more, or leave it out"
        )
    arch = model_arch(model)
    # The data's content, not its listing's mtimes: machines holding copies of the same data must agree on the
    # study they share (hashed once per machine, then cached against the listing).
    content = source.content_fingerprint()
    model_id = model_identity(model)
    # The study's identity: trials measured under another rule, model or data are never mixed into it.
    signature = {
        "model": model_id,
        "arch": arch,
        "dataset": content,
        "preprocess": preprocess_spec_for(model).digest(),
        **spec.describe(),
    }
    name = _study_name(options, (machine.machine_id, space.name, model_id, content), signature)
    url = options.storage or default_storage()
    return StudySetup(machine, space, model, arch, dataset, source, spec, need, signature, name, url)
