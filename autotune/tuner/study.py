"""`autotune study`: an Optuna search over the engine's knobs, measured on a fixed scan, saved as a profile."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError, one_line
from autotune.tuner.objective import ScanSpec, TrialFailed, TrialStopped, measure
from autotune.tuner.profile import (
    REFERENCE_IMAGES,
    Profile,
    library_versions,
    model_arch,
    predict_seconds,
    studies_dir,
)
from autotune.tuner.space import SearchSpace, load_space
from autotune.tuner.validation import Candidate, Validation, validate, validation_spec

OBJECTIVE_NAME = "images_per_s"
FAIL_FAST = 3  # this many failures before any success means the setup, not the config, is broken


@dataclass(kw_only=True)
class StudyOptions:
    """Everything `autotune study` takes; defaults work out of the box on the embedded data and model."""

    device: str = "cpu"
    trials: int = 20
    timeout_s: float | None = None
    scan_size: int | None = None  # cap on one trial's images; None: derived from the space
    rounds: int = 4  # timed batch rounds per trial
    min_timed_images: int = 96  # ... or more rounds, until the timed part holds this many images
    validate_rounds: int = 12  # timed rounds of each validation run
    validate_min_images: int = 480  # ... or more, as for trials: a validation window of a few seconds is noise
    validate_repeats: int = 3  # interleaved validation runs per candidate (0: no validation)
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
    guard_threshold: float = 0.99
    guard_sample: int = 256


@dataclass
class StudyOutcome:
    """The study's pick: its trial figure, its validated figure, the default's, and the profile it saved."""

    study_name: str
    storage: str
    best_trial: int
    config: EngineConfig
    trial_images_per_s: float
    images_per_s: float  # validated (the trial figure when validation was off)
    spread: float
    unstable: bool
    default_images_per_s: float | None
    current_images_per_s: float | None
    made_current: bool
    trials: dict[str, int]
    seconds: float
    profile: Profile | None
    profile_path: Path | None
    validation: dict[str, Any] = field(default_factory=dict)
    trial_images: int = 0
    overhead_s: float = 0.0  # warm-up and drain seconds beyond the steady rate (validation median)

    def predicted_images_per_s(self, images: int) -> float:
        """Predicted images/s of a scan of ``images`` images (start-up excluded, as `retrieve` reports it)."""
        return images / predict_seconds(images, self.images_per_s, self.overhead_s)

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        gain = self.images_per_s / self.default_images_per_s if self.default_images_per_s else None
        ratio = self.trial_images_per_s / self.images_per_s if self.images_per_s else None
        return {
            "study": self.study_name,
            "storage": self.storage,
            "best_trial": self.best_trial,
            "config": self.config.describe(),
            "trial_images_per_s": round(self.trial_images_per_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            "trial_over_validated": round(ratio, 3) if ratio else None,
            "spread": round(self.spread, 4),
            "unstable": self.unstable,
            "default_images_per_s": round(self.default_images_per_s, 3) if self.default_images_per_s else None,
            "speedup_over_default": round(gain, 3) if gain else None,
            "current_profile_images_per_s": (
                round(self.current_images_per_s, 3) if self.current_images_per_s else None
            ),
            "profile_in_use": self.made_current,
            "overhead_s": round(self.overhead_s, 3),
            "predicted_seconds_500k": (
                round(predict_seconds(REFERENCE_IMAGES, self.images_per_s, self.overhead_s), 1)
                if self.images_per_s
                else None
            ),
            "max_trial_images": self.trial_images,
            **{f"trials_{k}": v for k, v in self.trials.items()},
            "seconds": round(self.seconds, 1),
            "profile": str(self.profile_path) if self.profile_path else None,
        }


def default_storage() -> str:
    """One SQLite file under studies/."""
    folder = studies_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'autotune.db').resolve()}"


def _slug(text: str) -> str:
    """Lower-case, dash-separated, short."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def default_study_name(machine_id: str, space: str, model: str, dataset_fp: str) -> str:
    """Derived from machine id, space (the device mix for built-in spaces), model and dataset, so the same
    command resumes the same study."""
    return f"{machine_id}.{_slug(space)}.{_slug(model)}.{dataset_fp[:8]}"


def _storage(url: str) -> Any:
    """An RDB storage whose heartbeat fails trials left RUNNING by a killed run and re-queues their params."""
    import optuna

    try:
        # Optuna >= 4.9 calls it RetryHeartbeatStaleTrialCallback; older releases use the failed-trial hook.
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        retry: dict[str, Any] = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    except ImportError:  # pragma: no cover - older Optuna
        from optuna.storages import RetryFailedTrialCallback

        retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=5,
            grace_period=20,
            **retry,
            engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None,
        )
    except Exception as exc:
        raise ConfigError(f"cannot open study storage {url}: {one_line(exc)}") from None


def fail_orphaned_running(study: Any) -> None:
    """Mark RUNNING trials whose heartbeat stopped (a killed run) as failed now, re-queueing their params."""
    import optuna

    if hasattr(optuna.storages, "fail_stale_trials"):
        optuna.storages.fail_stale_trials(study)


@dataclass
class _Setup:
    """What a study needs before its first trial: machine, space, workload, identity."""

    machine: Any
    space: SearchSpace
    model: str
    arch: str
    dataset: str
    source: Any
    spec: ScanSpec
    trial_images: int
    signature: dict[str, Any]
    name: str
    url: str


def max_trial_images(space: SearchSpace, spec: ScanSpec, gpus: int) -> int:
    """The most images any configuration of ``space`` needs for one trial (largest batch round)."""
    cpu = int(space.largest("cpu_models", 1)) * int(space.largest("cpu_batch", 32))
    gpu = gpus * int(space.largest("gpu_models", 0)) * int(space.largest("gpu_batch", 128))
    size = cpu + gpu
    # Smaller rounds get more timed rounds (min_timed_images), overshooting it by less than one round: the
    # largest round bounds both parts.
    timed = max(size * spec.rounds, spec.min_timed_images + size - 1 if spec.min_timed_images else 0)
    return size * (spec.warmup_rounds + spec.drain_rounds) + timed


def _prepare(options: StudyOptions) -> _Setup:
    """Load the space, open the data, fix the measurement rule, and refuse a scan size too small for it."""
    from autotune.data import open_source
    from autotune.defaults import DEFAULT_MODEL, default_dataset
    from autotune.engine.runner import preprocess_spec_for
    from autotune.machine import detect_machine

    machine = detect_machine()
    space = load_space(
        options.space or options.device,
        machine_facts=machine.facts(),
        device=options.device if options.space is None else None,
    )
    if options.rounds < 2:
        raise ConfigError(f"--rounds must be at least 2 (got {options.rounds}): one round is all noise")
    model = options.model or DEFAULT_MODEL
    dataset = options.dataset or str(default_dataset())
    source = open_source(dataset, options.image_column, options.split)
    spec = ScanSpec(
        dataset=dataset,
        model=model,
        rounds=options.rounds,
        min_timed_images=options.min_timed_images,
        scan_size=options.scan_size,
        timeout_s=options.trial_timeout_s,
        image_column=options.image_column,
        split=options.split,
    )
    need = max_trial_images(space, spec, machine.gpu_count)
    if options.scan_size is not None and options.scan_size < need:
        raise ConfigError(
            f"--scan-size {options.scan_size} is too small for part of the space {space.name}: its largest "
            f"batch rounds need {need} images per trial ({spec.rounds} timed rounds plus warm-up and drain); "
            f"pass --scan-size {need} or more, or leave it out"
        )
    arch = model_arch(model)
    # The study's identity: trials measured under another rule, model or data are never mixed into it.
    signature = {
        "model": model,
        "arch": arch,
        "dataset": source.fingerprint(),
        "preprocess": preprocess_spec_for(model).digest(),
        **spec.describe(),
    }
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:6]
    name = options.study_name or default_study_name(machine.machine_id, space.name, model, source.fingerprint())
    if options.study_name is None:
        name = f"{name}.m{digest}"
    url = options.storage or default_storage()
    return _Setup(machine, space, model, arch, dataset, source, spec, need, signature, name, url)


def _open_study(setup: _Setup, options: StudyOptions) -> tuple[Any, set[int]]:
    """Create or resume the Optuna study (and the trial numbers it had); refuse one measured differently."""
    import optuna

    from autotune.tuner.samplers import make_sampler

    # Our own log lines report every trial; Optuna's would repeat failures with full tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=setup.name,
        storage=_storage(setup.url),
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(options.sampler, options.seed, options.trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    stored = study.user_attrs.get("signature")
    if stored is not None and stored != setup.signature:
        changed = sorted(k for k in set(stored) | set(setup.signature) if stored.get(k) != setup.signature.get(k))
        raise ConfigError(
            f"study {setup.name} was measured differently ({', '.join(changed)} changed): its trials cannot be "
            "compared with new ones; pass another --study-name, or the same settings as before"
        )
    study.set_metric_names([OBJECTIVE_NAME])
    study.set_user_attr("signature", setup.signature)
    study.set_user_attr("machine", setup.machine.summary())
    study.set_user_attr("machine_id", setup.machine.machine_id)
    study.set_user_attr("space", setup.space.source)
    study.set_user_attr("scan", {"dataset": setup.dataset, "model": setup.model, **setup.spec.describe()})
    _save_note(study, setup.machine, setup.space, setup.spec)
    fail_orphaned_running(study)
    before = {t.number for t in study.trials}
    if not study.trials:
        study.enqueue_trial(setup.space.default_params(), user_attrs={"default": True})
    return study, before


def run_study(options: StudyOptions, log: Callable[[str], None] | None = None) -> StudyOutcome:
    """Search the space for the fastest engine configuration on this machine, validate it, save a profile.

    Each trial runs the engine in a fresh process and times its steady state over ``rounds`` batch rounds
    (every replica busy; start-up, warm-up and drain recorded apart), so clearly worse trials are pruned
    round by round. Trial 0 is the space's default configuration; infeasible proposals are recorded, never
    run. The pick (best trial) is then validated against trial 0 and the profile in use on a longer scan of
    images the trials did not use, interleaved; its profile keeps the trial figure, the validated figure and
    their ratio, and becomes the one in use only when it validates faster than the current one (or with
    ``save_profile``).

    Example:
        >>> out = run_study(StudyOptions(device="cpu", trials=10))
        >>> out.config.describe(), out.images_per_s, out.trial_images_per_s
    """
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    say = log or (lambda _m: None)
    t_start = time.perf_counter()
    setup = _prepare(options)
    study, before = _open_study(setup, options)
    say(f"study {setup.name} ({len(before)} trials so far) on {setup.machine.summary()}")
    say(f"each trial: {setup.spec.rounds} timed batch rounds, at most {setup.trial_images} images")
    guard = _Guard(setup, options, say)
    _search(study, setup, options, guard, say)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise AutotuneError("no trial completed: nothing to pick (see `autotune report` for the reasons)")
    best = max(complete, key=lambda t: float(t.value or 0.0))
    default = next((t for t in study.trials if t.user_attrs.get("default") and t.value is not None), None)
    outcome = _validate_and_save(study, setup, options, best, default, guard, say)
    outcome.trials = _count_states(study, before)
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _search(study: Any, setup: _Setup, options: StudyOptions, guard: _Guard, say: Callable[[str], None]) -> None:
    """Run the trials: feasibility, accuracy guard, measurement with round-by-round pruning."""
    import optuna

    space, spec, machine = setup.space, setup.spec, setup.machine
    counted = {"runs": 0, "failures_before_success": 0, "any_success": False}
    best_seen: dict[str, Any] = {"value": None, "since": 0}
    diagnosis: list[str] = []

    def objective(trial: Any) -> float:
        params = space.suggest(trial)
        bad = space.violations(params)
        config = None
        if not bad:
            try:
                config = space.to_config(params).validate(cores=machine.logical_cores, gpus=machine.gpu_count)
            except ConfigError as exc:
                bad = [str(exc)]
        if not bad and config is not None:
            small = spec.too_small_for(config)
            bad = [small] if small else guard.violations(config, trial)
        if bad:
            trial.set_user_attr("infeasible", bad)
            raise optuna.TrialPruned(f"infeasible: {bad[0]}")
        assert config is not None
        trial.set_user_attr("config", config.describe())
        # TPE proposes a measured point again now and then (about 1 trial in 6 on a small space, by the
        # sampler replay): answer from the study instead of paying for the same scan twice.
        done = optuna.trial.TrialState.COMPLETE
        twin = next((t for t in trial.study.get_trials(deepcopy=False, states=(done,)) if t.params == params), None)
        if twin is not None:
            trial.set_user_attr("repeat_of", twin.number)
            return float(twin.value)
        counted["runs"] += 1

        def on_round(k: int, rate: float) -> bool:
            trial.report(rate, k)
            return bool(trial.should_prune())

        try:
            m = measure(config, spec, on_round)
        except TrialStopped as stop:
            trial.set_user_attr("round_images_per_s", stop.args[0] if stop.args else [])
            raise optuna.TrialPruned("pruned: slower than the median at the same round") from None
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        for key, value in m.attrs().items():
            trial.set_user_attr(key, value)
        reused = f", {m.reused_images} images reused" if m.reused_images else ""
        say(
            f"trial {trial.number}: {m.images_per_s:.2f} images/s  [{config.describe()}]  "
            f"start-up {m.startup_s:.1f} s{reused}; bottleneck: {m.bottleneck}"
        )
        return m.images_per_s

    def callback(st: Any, trial: Any) -> None:
        state = trial.state
        if state == optuna.trial.TrialState.FAIL:
            say(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', 'unknown')}")
            if not counted["any_success"]:
                counted["failures_before_success"] += 1
                diagnosis.append(trial.user_attrs.get("fail_reason", "unknown"))
                if counted["failures_before_success"] >= FAIL_FAST:
                    st.stop()
        elif state == optuna.trial.TrialState.COMPLETE:
            counted["any_success"] = True
            if best_seen["value"] is None or trial.value > best_seen["value"]:
                best_seen["value"], best_seen["since"] = trial.value, 0
            else:
                best_seen["since"] += 1
                if options.patience and best_seen["since"] >= options.patience:
                    say(f"no improvement for {options.patience} trials: stopping")
                    st.stop()
        if counted["runs"] >= options.trials:
            st.stop()

    try:
        study.optimize(
            objective,
            n_trials=options.trials * 5,
            timeout=options.timeout_s,
            callbacks=[callback],
            catch=(TrialFailed,),
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        say("interrupted: the study is saved; run the same command again to resume")
        raise
    except ValueError as exc:
        if "different distribution" not in str(exc):
            raise
        raise ConfigError(
            f"study {setup.name} was created with another search space; pass --study-name to start a new one"
        ) from None
    if diagnosis and not counted["any_success"] and counted["failures_before_success"] >= FAIL_FAST:
        raise AutotuneError(f"the first {FAIL_FAST} trials all failed; the last reason: {diagnosis[-1]}")


class _Guard:
    """The accuracy guard inside a study: the fp32 reference built once, checks cached per backend."""

    def __init__(self, setup: _Setup, options: StudyOptions, say: Callable[[str], None]) -> None:
        self.setup, self.options, self.say = setup, options, say
        self.reference: Any = None

    def checks(self, config: EngineConfig) -> list[Any]:
        """Guard results for the config's non-reference backends (empty for fp32 eager)."""
        from autotune.tuner import guard

        if not guard.non_reference_parts(config):
            return []
        if self.reference is None:
            self.say("accuracy guard: computing fp32 reference embeddings of the validation sample (once)")
            self.reference = guard.build_reference(
                self.setup.source,
                self.setup.model,
                sample=self.options.guard_sample,
                image_column=self.options.image_column,
            )
        return guard.check_config(self.reference, self.setup.model, config, self.options.guard_threshold)

    def violations(self, config: EngineConfig, trial: Any) -> list[str]:
        """Guard failures as infeasibility reasons; every result is recorded on the trial."""
        bad = []
        for result in self.checks(config):
            trial.set_user_attr(
                f"guard_{result.backend}_{result.precision}",
                {
                    "min_cosine": result.min_cosine,
                    "centred_min_cosine": result.centred_min_cosine,
                    "probe_overlap_min": result.probe_overlap_min,
                    "enforced_overlap": result.enforced_overlap,
                    "passed": result.passed,
                },
            )
            if not result.passed:
                bad.append(f"accuracy guard: {result.backend}/{result.precision}: {result.reason}")
        return bad


def _validate_and_save(
    study: Any,
    setup: _Setup,
    options: StudyOptions,
    best: Any,
    default: Any,
    guard: _Guard,
    say: Callable[[str], None],
) -> StudyOutcome:
    """Validate the pick against the default and the profile in use; save it; choose the profile in use."""
    from autotune.tuner.profile import current_profile, save_profile

    space = setup.space
    config = space.to_config(best.params)
    current = current_profile(setup.machine.machine_id, setup.arch) if options.save else None
    candidates = [Candidate("pick", config, float(best.value))]
    if default is not None:
        candidates.append(Candidate("default", space.to_config(default.params), float(default.value)))
    if current is not None:
        candidates.append(Candidate("current", current.config, current.trial_images_per_s))
    validation = None
    if options.validate_repeats > 0:
        vspec = validation_spec(setup.spec, setup.trial_images, options.validate_rounds, options.validate_min_images)
        say(f"validation: {len(candidates)} candidates x {options.validate_repeats} runs on unseen images")
        validation = validate(candidates, vspec, options.validate_repeats, say)
        study.set_user_attr("validation", validation.to_dict())
    pick = candidates[0]
    validated = pick.images_per_s if validation else float(best.value)
    overhead = pick.overhead_s if validation else float(best.user_attrs.get("overhead_s") or 0.0)
    spread = pick.spread if validation else 0.0
    unstable = bool(validation and validation.unstable)
    by_name = {c.name: c for c in candidates}
    cur = by_name.get("current")
    beats_current = cur is None or (validation is not None and validated > cur.images_per_s)
    make_current = options.save_profile or beats_current
    if unstable:
        say(f"the pick is unstable: its validation runs spread {spread:.0%}; it is saved but not put in use")
        make_current = options.save_profile
    profile = path = None
    if options.save:
        profile = _profile(setup, best, config, validated, spread, validation, unstable)
        profile.overhead_s = overhead
        checks = guard.checks(config)  # cached from the trials: checked on this very model
        if checks:
            from autotune.tuner.guard import guard_record

            profile.guard = guard_record(checks)
        path = save_profile(profile, make_current=make_current)
        kept = f"the profile in use ({cur.images_per_s:.1f} images/s) stays" if cur else "not put in use"
        in_use = "in use" if make_current else f"kept; {kept}"
        say(f"profile {profile.id}: {config.describe()} at {validated:.1f} images/s validated ({in_use})")
    dflt = by_name.get("default")
    return StudyOutcome(
        study_name=setup.name,
        storage=setup.url,
        best_trial=best.number,
        config=config,
        trial_images_per_s=float(best.value),
        images_per_s=validated,
        spread=spread,
        unstable=unstable,
        default_images_per_s=(dflt.images_per_s if validation else dflt.trial_images_per_s) if dflt else None,
        current_images_per_s=cur.images_per_s if cur and validation else None,
        made_current=bool(options.save and make_current),
        trials={},
        seconds=0.0,
        profile=profile,
        profile_path=path,
        validation=validation.to_dict() if validation else {},
        trial_images=setup.trial_images,
        overhead_s=overhead,
    )


def _profile(
    setup: _Setup,
    best: Any,
    config: EngineConfig,
    validated: float,
    spread: float,
    validation: Validation | None,
    unstable: bool,
) -> Profile:
    """The profile of a validated pick, with its provenance and the guard it passed."""
    return Profile(
        machine_id=setup.machine.machine_id,
        machine=setup.machine.summary(),
        config=config,
        images_per_s=validated,
        spread=spread,
        study=setup.name,
        storage=setup.url,
        trial=best.number,
        scan_size=setup.trial_images,
        model=setup.model,
        model_arch=setup.arch,
        dataset=setup.dataset,
        dataset_fingerprint=setup.source.fingerprint(),
        device=setup.space.device,
        versions=library_versions(),
        rechecks=list(validation.candidates[0].runs) if validation else [],
        startup_s=best.user_attrs.get("startup_s"),
        backend_setup={"replicas": (best.user_attrs.get("extra") or {}).get("backend_setup", [])},
        trial_images_per_s=float(best.value),
        validated_images_per_s=validated if validation else None,
        validation=validation.to_dict() if validation else {},
        unstable=unstable,
    )


def _count_states(study: Any, before: set[int]) -> dict[str, int]:
    """Trials of this run by state (infeasible apart from pruned)."""
    states: dict[str, int] = {}
    for t in study.trials:
        if t.number in before:
            continue
        key = "infeasible" if t.user_attrs.get("infeasible") else t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    return states


def _save_note(study: Any, machine: Any, space: SearchSpace, spec: ScanSpec) -> None:
    """A study note for optuna-dashboard: the machine and the workload."""
    try:
        from optuna_dashboard import save_note

        save_note(
            study,
            (
                f"# clip-autotune study\n\n**Machine**: {machine.summary()}  \n"
                f"**Machine id**: `{machine.machine_id}`\n\n"
                f"**Objective**: steady-state images/s over {spec.rounds} batch rounds of every replica, after "
                f"{spec.warmup_rounds} warm-up round(s); the last round (drain) untimed  \n"
                f"**Model**: `{spec.model}`  \n**Dataset**: `{spec.dataset}`  \n"
                f"**Space**: `{space.source}` ({space.device})\n"
            ),
        )
    except Exception:  # the note is a nicety; the study must not depend on the dashboard package
        pass
