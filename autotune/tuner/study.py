"""`autotune study`: an Optuna search over the engine's knobs, measured on a fixed scan, saved as a profile."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError
from autotune.tuner.objective import ScanSpec, TrialFailed, TrialStopped, measure
from autotune.tuner.profile import Profile, library_versions, model_arch, save_profile, studies_dir
from autotune.tuner.space import SearchSpace, load_space

OBJECTIVE_NAME = "images_per_s"
FAIL_FAST = 3  # this many failures before any success means the setup, not the config, is broken


@dataclass(kw_only=True)
class StudyOptions:
    """Everything `autotune study` takes; defaults work out of the box on the embedded data and model."""

    device: str = "cpu"
    trials: int = 20
    timeout_s: float | None = None
    scan_size: int = 192
    warmup: int = 32
    shards: int = 3
    space: str | None = None
    storage: str | None = None
    study_name: str | None = None
    model: str | None = None
    dataset: str | None = None
    image_column: str | None = None
    split: str | None = None
    repeats: int = 3
    recheck_top: int = 3
    patience: int | None = None
    trial_timeout_s: float = 600.0
    seed: int = 0
    save: bool = True
    guard_threshold: float = 0.99
    guard_sample: int = 256


@dataclass
class StudyOutcome:
    """The study's pick: best configuration with its re-measured throughput and spread, and the profile."""

    study_name: str
    storage: str
    best_trial: int
    config: EngineConfig
    images_per_s: float
    spread: float
    default_images_per_s: float | None
    trials: dict[str, int]
    seconds: float
    profile: Profile | None
    profile_path: Path | None
    rechecks: dict[int, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        gain = self.images_per_s / self.default_images_per_s if self.default_images_per_s else None
        return {
            "study": self.study_name,
            "storage": self.storage,
            "best_trial": self.best_trial,
            "config": self.config.describe(),
            "images_per_s": round(self.images_per_s, 3),
            "spread": round(self.spread, 4),
            "default_images_per_s": round(self.default_images_per_s, 3) if self.default_images_per_s else None,
            "speedup_over_default": round(gain, 3) if gain else None,
            "predicted_seconds_500k": round(500_000 / self.images_per_s, 1) if self.images_per_s else None,
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
        raise ConfigError(f"cannot open study storage {url}: {str(exc).splitlines()[0]}") from None


def fail_orphaned_running(study: Any) -> None:
    """Mark RUNNING trials whose heartbeat stopped (a killed run) as failed now, re-queueing their params."""
    import optuna

    if hasattr(optuna.storages, "fail_stale_trials"):
        optuna.storages.fail_stale_trials(study)


def run_study(options: StudyOptions, log: Callable[[str], None] | None = None) -> StudyOutcome:
    """Search the space for the fastest engine configuration on this machine and save it as a profile.

    Each trial runs the engine in a fresh process on the same ``scan_size`` images after a ``warmup`` and
    reports each shard's images/s (median = objective), so clearly worse trials are pruned early. Trial 0 is
    the space's default configuration. Infeasible proposals are recorded, never run. After the search the
    best few configurations are re-measured, interleaved, ``repeats`` times; the pick is by median.

    Example:
        >>> out = run_study(StudyOptions(device="cpu", trials=10))
        >>> out.config.describe(), out.images_per_s
    """
    import warnings

    import optuna

    from autotune.data import open_source

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from autotune.defaults import DEFAULT_MODEL, default_dataset
    from autotune.machine import detect_machine

    say = log or (lambda _m: None)
    t_start = time.perf_counter()
    machine = detect_machine()
    space = load_space(
        options.space or options.device,
        machine_facts=machine.facts(),
        device=options.device if options.space is None else None,
    )
    model = options.model or DEFAULT_MODEL
    dataset = options.dataset or str(default_dataset())
    source = open_source(dataset, options.image_column, options.split)
    needed = options.warmup + options.scan_size
    if len(source) < needed:
        raise ConfigError(f"the dataset has {len(source)} images; a study needs warmup + scan size = {needed}")
    arch = model_arch(model)
    spec = ScanSpec(
        dataset=dataset,
        model=model,
        scan_size=options.scan_size,
        warmup=options.warmup,
        shards=options.shards,
        timeout_s=options.trial_timeout_s,
        image_column=options.image_column,
        split=options.split,
    )
    url = options.storage or default_storage()
    # The space's name stands in for the device mix (it is the device for the built-in spaces), so a study
    # resumed with another space's parameters never mixes two sets of distributions.
    name = options.study_name or default_study_name(machine.machine_id, space.name, model, source.fingerprint())
    # Our own log lines report every trial; Optuna's would repeat failures with full tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=name,
        storage=_storage(url),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(
            seed=options.seed, n_startup_trials=min(8, max(2, options.trials // 3)), multivariate=True
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    study.set_metric_names([OBJECTIVE_NAME])
    study.set_user_attr("machine", machine.summary())
    study.set_user_attr("machine_id", machine.machine_id)
    study.set_user_attr("space", space.source)
    study.set_user_attr(
        "scan",
        {
            "dataset": dataset,
            "model": model,
            "scan_size": options.scan_size,
            "warmup": options.warmup,
            "shards": options.shards,
        },
    )
    _save_note(study, machine, space, spec)
    fail_orphaned_running(study)
    before = {t.number for t in study.trials}
    say(f"study {name} ({len(before)} trials so far) on {machine.summary()}")
    if not study.trials:
        study.enqueue_trial(space.default_params(), user_attrs={"default": True})
    counted = {"runs": 0, "failures_before_success": 0, "any_success": False}
    best_seen: dict[str, Any] = {"value": None, "since": 0}
    guard_state: dict[str, Any] = {"reference": None}

    def guard_checks(config: EngineConfig) -> list[Any]:
        """Accuracy-guard results for the config's non-reference backends (cached per backend)."""
        from autotune.tuner import guard

        if not guard.non_reference_parts(config):
            return []
        if guard_state["reference"] is None:
            say("accuracy guard: computing fp32 reference embeddings of the validation sample (once)")
            guard_state["reference"] = guard.build_reference(
                source, model, sample=options.guard_sample, image_column=options.image_column
            )
        return guard.check_config(guard_state["reference"], model, config, options.guard_threshold)

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
            bad = [small] if small else []
        if not bad and config is not None:
            for result in guard_checks(config):
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
                    bad = [f"accuracy guard: {result.backend}/{result.precision}: {result.reason}"]
        if bad:
            trial.set_user_attr("infeasible", bad)
            raise optuna.TrialPruned(f"infeasible: {bad[0]}")
        assert config is not None
        trial.set_user_attr("config", config.describe())
        counted["runs"] += 1

        def on_shard(k: int, rate: float) -> bool:
            trial.report(rate, k)
            return bool(trial.should_prune())

        try:
            m = measure(config, spec, on_shard)
        except TrialStopped as stop:
            trial.set_user_attr("shard_images_per_s", stop.args[0] if stop.args else [])
            raise optuna.TrialPruned("pruned: slower than the median at the same shard") from None
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        for key, value in m.attrs().items():
            trial.set_user_attr(key, value)
        say(f"trial {trial.number}: {m.images_per_s:.2f} images/s  [{config.describe()}]  bottleneck: {m.bottleneck}")
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
        elif state == optuna.trial.TrialState.PRUNED and trial.user_attrs.get("infeasible"):
            pass
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
            f"study {name} was created with another search space; pass --study-name to start a new one"
        ) from None
    if diagnosis and not counted["any_success"] and counted["failures_before_success"] >= FAIL_FAST:
        raise AutotuneError(f"the first {FAIL_FAST} trials all failed; the last reason: {diagnosis[-1]}")

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise AutotuneError("no trial completed: nothing to pick (see `autotune report` for the reasons)")
    default = next((t for t in study.trials if t.user_attrs.get("default") and t.value is not None), None)

    # Noise: re-measure the best few distinct configurations, interleaved, and pick by median.
    top = _distinct_top(complete, options.recheck_top)
    rechecks: dict[int, list[float]] = {t.number: [] for t in top}
    if options.repeats > 0 and len(top) > 1:
        for r in range(options.repeats):
            for t in top:
                cfg = space.to_config(t.params)
                try:
                    rate = measure(cfg, spec).images_per_s
                except TrialFailed as exc:
                    say(f"re-measure of trial {t.number} failed: {exc}")
                    rate = 0.0
                rechecks[t.number].append(rate)
                say(f"re-measure {r + 1}/{options.repeats}: trial {t.number} {rate:.2f} images/s")
        # Finished trials are read-only in Optuna: the re-measurements live on the study.
        study.set_user_attr("rechecks", {str(k): v for k, v in rechecks.items()})
    else:
        for t in top:
            rechecks[t.number] = [float(t.value)]
    best = max(top, key=lambda t: statistics.median(rechecks[t.number] + [float(t.value)]))
    values = rechecks[best.number] + [float(best.value)]
    med = statistics.median(values)
    spread = (max(values) - min(values)) / med if med > 0 else 0.0
    config = space.to_config(best.params)
    study.set_user_attr("best", {"trial": best.number, "images_per_s": med, "spread": spread})

    profile = None
    path = None
    if options.save:
        profile = Profile(
            machine_id=machine.machine_id,
            machine=machine.summary(),
            config=config,
            images_per_s=med,
            spread=spread,
            study=name,
            storage=url,
            trial=best.number,
            scan_size=options.scan_size,
            model=model,
            model_arch=arch,
            dataset=dataset,
            dataset_fingerprint=source.fingerprint(),
            device=space.device,
            versions=library_versions(),
            rechecks=values,
            startup_s=best.user_attrs.get("startup_s"),
            backend_setup={"replicas": (best.user_attrs.get("extra") or {}).get("backend_setup", [])},
        )
        checks = guard_checks(config)
        if checks:  # checked on this very model (cached from the trials): retrieve accepts the profile
            from autotune.tuner.guard import guard_record

            profile.guard = guard_record(checks)
        path = save_profile(profile)
    states: dict[str, int] = {}
    for t in study.trials:
        if t.number in before:
            continue
        key = "infeasible" if t.user_attrs.get("infeasible") else t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    default_value = None
    if default is not None:
        default_value = statistics.median(rechecks.get(default.number, []) + [float(default.value or 0.0)])
    return StudyOutcome(
        study_name=name,
        storage=url,
        best_trial=best.number,
        config=config,
        images_per_s=med,
        spread=spread,
        default_images_per_s=default_value,
        trials=states,
        seconds=time.perf_counter() - t_start,
        profile=profile,
        profile_path=path,
        rechecks=rechecks,
    )


def _distinct_top(trials: list[Any], n: int) -> list[Any]:
    """The n best completed trials with distinct parameters."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for t in sorted(trials, key=lambda t: -float(t.value)):
        key = tuple(sorted(t.params.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
        if len(out) == n:
            break
    return out


def _save_note(study: Any, machine: Any, space: SearchSpace, spec: ScanSpec) -> None:
    """A study note for optuna-dashboard: the machine and the workload."""
    try:
        from optuna_dashboard import save_note

        save_note(
            study,
            (
                f"# clip-autotune study\n\n**Machine**: {machine.summary()}  \n"
                f"**Machine id**: `{machine.machine_id}`\n\n"
                f"**Objective**: images/s (median of {spec.shards} shards of {spec.shard_size} images after "
                f"{spec.warmup} warm-up images)  \n**Model**: `{spec.model}`  \n**Dataset**: `{spec.dataset}`  \n"
                f"**Space**: `{space.source}` ({space.device})\n"
            ),
        )
    except Exception:  # the note is a nicety; the study must not depend on the dashboard package
        pass
