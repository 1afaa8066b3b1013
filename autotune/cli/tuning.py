"""Commands of the tuner: the study, its report and dashboard, the per-machine profiles and their accuracy check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autotune import console
from autotune.cli.options import ImageColumnOpt, JsonOpt, SplitOpt, StorageOpt
from autotune.data import open_source
from autotune.defaults import default_dataset
from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.models.guard import DEFAULT_THRESHOLD
from autotune.tuner.profile import (
    Profile,
    arch_short,
    find_profile,
    history,
    profile_path,
    save_profile,
    short_config,
    use_profile,
)
from autotune.tuner.report import serve_dashboard, study_report, top_text
from autotune.tuner.roofline import roofline_share
from autotune.tuner.shared_pick import pull_picks
from autotune.tuner.study import StudyOptions, run_study

# The study's options, declared here so that the handler itself stays a readable page.
TrialsOpt = Annotated[
    int,
    typer.Option(
        "--trials",
        min=1,
        help="Trials that run a scan (infeasible ones excluded); on a study shared by several machines, their total.",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=1,
        help="Seconds for the whole study: the search stops early enough to validate and save its pick in the "
        "time left (a trial running then is stopped at its next round).",
    ),
]
ScanSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--scan-size",
        min=1,
        help="Cap on the images of one trial (default: what each configuration needs). Too small for part "
        "of the space: refused before any trial runs, naming the minimum.",
    ),
]
RoundsOpt = Annotated[
    int, typer.Option("--rounds", min=2, help="Timed batch rounds (every replica one batch) per trial.")
]
SpaceOpt = Annotated[
    str | None, typer.Option("--space", help="Search-space YAML file (default: the device's built-in).")
]
StudyStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna RDB URL (default: sqlite file under studies/). Several machines: one postgresql://... URL, "
        "the same command on each.",
    ),
]
StudyNameOpt = Annotated[
    str | None,
    typer.Option(
        "--study-name",
        help="Default: machine id + space + model + a hash of the data's content (the same on machines holding "
        "the same data).",
    ),
]
ValidateRepeatsOpt = Annotated[
    int,
    typer.Option(
        "--validate-repeats",
        min=0,
        help="The fewest interleaved pairs of pick and baseline runs (0: no validation). The pick goes in use when "
        "it beats the profile in use (else the safe default) by a one-sided sign test at p < 0.05: five pairs all "
        "won is the fewest that can; more are measured while the answer is open and the time allows.",
    ),
]
SaveProfileOpt = Annotated[
    bool,
    typer.Option("--save-profile", help="Put the pick in use even if it validates slower than the profile in use."),
]
PatienceOpt = Annotated[int | None, typer.Option("--patience", help="Stop after this many trials without improvement.")]
TrialTimeoutOpt = Annotated[float, typer.Option("--trial-timeout", help="Seconds before a trial is failed as hung.")]
HeartbeatOpt = Annotated[
    float,
    typer.Option(
        "--heartbeat",
        min=1,
        envvar="AUTOTUNE_HEARTBEAT",
        help="Seconds between a running trial's heartbeats; a trial silent for 4 of them belongs to a dead worker "
        "and is queued again.",
    ),
]


def study_cmd(
    device: Annotated[str, typer.Option("--device", help="Device mix to tune: cpu, gpu or cpu+gpu.")] = "cpu",
    trials: TrialsOpt = 20,
    timeout: TimeoutOpt = None,
    scan_size: ScanSizeOpt = None,
    rounds: RoundsOpt = 4,
    space: SpaceOpt = None,
    storage: StudyStorageOpt = None,
    study_name: StudyNameOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model to tune with (default: the ViT-B/32 stand-in).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to scan (default: a generated corpus).")
    ] = None,
    image_column: ImageColumnOpt = None,
    split: SplitOpt = None,
    validate_repeats: ValidateRepeatsOpt = 5,
    save_profile: SaveProfileOpt = False,
    sampler: Annotated[str, typer.Option("--sampler", help="Optuna sampler: tpe, gp or random.")] = "tpe",
    patience: PatienceOpt = None,
    trial_timeout: TrialTimeoutOpt = 600.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
    heartbeat: HeartbeatOpt = 5.0,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: this machine runs the trials; ray: every node of a Ray cluster runs them, one at a time "
            "each, against --storage (one study and one profile per machine id).",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --engine ray: the cluster to join (default: auto, the one this machine belongs to; local: "
            "a new one on this machine).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tune the scan engine for this machine with Optuna and save the best configuration as its profile.

    Each trial runs the engine in a trial process of its own (kept for the next trial while trials end
    cleanly) and times its steady state over --rounds batch rounds of every replica, as a full run runs
    (start-up, warm-up and drain recorded apart); clearly worse trials are pruned round by round. Trial 0 is
    the space's default, which is also the safe default `retrieve` runs without a profile. The best kinds meet
    again in a short final, and the pick is validated against the profile in use (else the safe default) in
    interleaved pairs on images the trials did not use: it goes in use when it is faster by a one-sided sign
    test at p < 0.05 (or with --save-profile); the last line says which, why, and the command to change it.
    The final and the validation take about 0.3 of the search's time, sized from the measured rates;
    --timeout bounds the whole study. Every pick is kept under studies/profiles/<machine-id>/ (see `autotune
    profile list`). Running the same command again resumes the study. Inspect it with `autotune dashboard` or
    `autotune report`.

    On several identical machines, run the same command with one --storage postgresql://... URL: each machine
    runs its trials one at a time, --trials is the total across them, a dead machine's trial is run again by
    another, and one machine validates and saves the pick (the output names it).
    """
    if model and model.startswith("synthetic:") and not as_json:
        console.warn("note: synthetic models have random weights: speed is real, rankings are not")
    options = StudyOptions(
        device=device, trials=trials, timeout_s=timeout, scan_size=scan_size, rounds=rounds, space=space,
        storage=storage, study_name=study_name, model=model, dataset=dataset, image_column=image_column,
        split=split, validate_repeats=validate_repeats, save_profile=save_profile, sampler=sampler,
        patience=patience, trial_timeout_s=trial_timeout, seed=seed, heartbeat_s=heartbeat,
    )  # fmt: skip
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray (got {engine!r})")
    if engine == "ray":
        from autotune.tuner.ray_workers import run_ray_study  # imports Ray: not for the local engine

        spread = run_ray_study(options, address=ray_address or "auto", log=console.log_for(not as_json))
        console.show(spread.summary(), "study (ray)", as_json)
        return
    outcome = run_study(options, log=console.log_for(not as_json), progress=console.progress_for(not as_json))
    console.show(outcome.summary(), "study", as_json)


def profile_list_cmd(
    all_machines: Annotated[
        bool, typer.Option("--all", help="Every machine's profiles, not only this machine's.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """This machine's saved profiles, newest first; the one in use for each model architecture is marked.

    Columns: id (for `autotune profile use`), mark (* in use, ! unstable, L legacy file), architecture,
    configuration, validated images/s, trial/validated ratio (above 1: the trials were optimistic), date.
    --json keeps every field.
    """
    entries = history(None if all_machines else detect_machine().machine_id)
    if as_json:
        console.emit_json(
            [{**p.to_dict(), "in_use": in_use, "legacy": p.legacy, "arch_key": p.arch_key} for p, in_use in entries]
        )
        return
    if not entries:
        console.echo("[dim]profiles: none saved yet (run `autotune study`)[/dim]")
    for machine_id in dict.fromkeys(p.machine_id for p, _ in entries):
        _print_profile_table(machine_id, [(p, u) for p, u in entries if p.machine_id == machine_id])


def _print_profile_table(machine_id: str, entries: list[tuple[Profile, bool]]) -> None:
    """One machine's profiles as a borderless table that fits 80 columns."""
    from rich.table import Table

    table = Table(
        title=f"profiles on {machine_id}",
        caption="* in use for its architecture, ! unstable, L legacy (format 1)",
        box=None,
        padding=(0, 1, 0, 0),  # one space between columns: the table fits 80 columns with legacy ids
        pad_edge=False,
        header_style="bold",
    )
    for name in ("id", "", "arch", "config", "img/s", "t/v", "date"):
        # Only the configuration may fold: ids must stay whole for `profile use`.
        table.add_column(name, no_wrap=name != "config", justify="right" if name in ("img/s", "t/v") else "left")
    for prof, in_use in entries:
        mark = ("*" if in_use else "") + ("!" if prof.unstable else "") + ("L" if prof.legacy else "")
        rate = prof.validated_images_per_s
        ratio = prof.validation_ratio
        table.add_row(
            prof.id,
            mark,
            arch_short(prof.model_arch),
            short_config(prof.config),
            "-" if rate is None else (f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}"),
            "-" if ratio is None else f"{ratio:.2f}",
            prof.date[:10],
        )
    console.console.print(table)


def profile_use_cmd(
    profile_id: Annotated[str, typer.Argument(help="A profile id from `autotune profile list`.")],
    as_json: JsonOpt = False,
) -> None:
    """Make a saved profile the one `autotune retrieve` uses for its model architecture on its machine."""
    prof = use_profile(profile_id)
    data = {
        "id": prof.id,
        "machine_id": prof.machine_id,
        "model_arch": prof.model_arch,
        "arch_key": prof.arch_key,
        "config": prof.config.describe(),
        "images_per_s": prof.images_per_s,
        "validated_images_per_s": prof.validated_images_per_s,
    }
    console.show(data, f"profile {prof.id} now in use for {arch_short(prof.model_arch)}", as_json)


def profile_pull_cmd(
    storage: Annotated[str, typer.Option("--storage", help="The shared study storage (postgresql://...).")],
    study_name: StudyNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Install the picks shared studies published in --storage for this machine id (a machine that joined later)."""
    got = pull_picks(storage, study_name, log=console.log_for(not as_json))
    rows = [g.to_dict() for g in got]
    if as_json:
        console.emit_json({"machine_id": detect_machine().machine_id, "installed": rows})
        return
    if not rows:
        console.note(f"no pick published in {storage} for machine id {detect_machine().machine_id}")


def profile_show_cmd(
    profile: Annotated[
        str, typer.Argument(help="'auto' (this machine's profile in use), a profile id, or a profile file.")
    ] = "auto",
    model: Annotated[
        str | None,
        typer.Option("--model", help="With auto: the profile in use for this model's architecture (default: newest)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """One profile in full, with its provenance."""
    prof = _found(find_profile(profile, model=model, say=console.note), model)
    data = prof.to_dict()
    data["config"] = prof.config.describe()
    data.update(roofline_share(prof.images_per_s, prof.machine_id, prof.model_arch))
    console.show(data, f"profile {prof.id or prof.machine_id}", as_json)


def _found(prof: Profile | None, model: str | None) -> Profile:
    """The profile found, or the one-line error saying there is none yet."""
    if prof is None:
        where = "this machine" if model is None else f"{model}'s architecture on this machine"
        raise ConfigError(f"no profile for {where} yet: run `autotune study` first")
    return prof


def dashboard_cmd(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8080,
    storage: StorageOpt = None,
) -> None:
    """Serve optuna-dashboard for the study storage on http://127.0.0.1:PORT (Ctrl-C to stop)."""
    serve_dashboard(storage, port, log=lambda line: console.echo(line, markup=False))


def report_cmd(
    study_name: Annotated[
        str | None, typer.Option("--study-name", help="Default: this machine's latest study.")
    ] = None,
    storage: StorageOpt = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG plots into this folder.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Configurations to list.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The study's top configurations, their gain over trial 0 (the default), the predicted 500,000-image
    time, and optionally PNG plots (history, parameter importances, images/s against batch and producers)."""
    data = study_report(study_name=study_name, storage=storage, plots=plots, top=top)
    if as_json:
        console.emit_json(data)
        return
    console.echo(f"study {data['study']}: top configurations")
    console.echo(top_text(data["top"]), markup=False)
    console.print_figures("summary", {k: v for k, v in data.items() if k not in ("top",)})


def verify_cmd(
    profile: Annotated[str, typer.Option("--profile", help="'auto' (this machine's) or a profile file.")] = "auto",
    model: Annotated[
        str | None, typer.Option("--model", help="The model retrievals will run (default: the profile's).")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Images for the validation sample.")] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Minimum embedding cosine against fp32.")
    ] = DEFAULT_THRESHOLD,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check a profile's accuracy guard on the model it will run (tuning on the random-weight stand-in
    finds speed, not quantisation error), and record the check in the profile. Exit 1 if it fails."""
    from autotune.tuner.profile import verify_profile  # imports the inference backends: not for --help

    # With --model, auto is the profile in use for that model's architecture.
    prof = _found(find_profile(profile, model=model, warn=False), model)
    sample = open_source(dataset or prof.dataset or str(default_dataset(progress=console.bar)), split=split)
    result = verify_profile(prof, model or prof.model, sample, threshold=threshold)
    # The check is written back into the file it read (a history entry for auto or an id).
    read_from = Path(profile)
    path = save_profile(prof, path=read_from if profile != "auto" and read_from.is_file() else profile_path(prof))
    data = result.to_dict()
    data["profile"] = str(path)
    console.show(data, "verify", as_json)
    if not result.passed:
        raise typer.Exit(1)
