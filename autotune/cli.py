"""The `autotune` command line: one table of commands, each a thin handler over the public API.

Heavy imports (torch, transformers) happen inside handlers so that `--help` stays instant.
User mistakes raise :class:`autotune.errors.AutotuneError`; :func:`main` prints them as one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from autotune.errors import AutotuneError

app = typer.Typer(
    name="autotune",
    help="Auto-tuning performance harness for CLIP text-to-image retrieval.\n\n"
    "Typical flow: `autotune make-dataset` (or bring your own images), `autotune study` to tune the scan "
    'engine for this machine, then `autotune retrieve "a photo of ..."`.',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: measured side by side in one run, printed as ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout (for scripts).")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="CLIP model: a hub id (online or cached), a local directory, or `synthetic:clip-vit-base-patch32` "
        "(offline stand-in with ViT-B/32's exact architecture and random weights) / `synthetic:tiny`.",
    ),
]
DatasetOpt = Annotated[
    Path,
    typer.Option(
        "--dataset",
        help="Image database: a folder of images (walked recursively) or a Hugging Face dataset "
        "(save_to_disk folder, parquet or imagefolder folder).",
    ),
]
ImageColumnOpt = Annotated[
    str | None, typer.Option("--image-column", help="Image column of a Hugging Face dataset (detected if omitted).")
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Splits of a Hugging Face dataset, in its syntax: `train+validation`, `train[:10%]` "
        "(default: train if present, else the first split). Folders of images have no splits.",
    ),
]


def _out(payload: dict[str, Any], title: str, as_json: bool) -> None:
    """Print a figures dictionary as JSON or as a table."""
    from autotune import report

    if as_json:
        report.emit_json(payload)
    else:
        report.print_figures(title, payload)


# ---------------------------------------------------------------------------------------------- data


@app.command("make-dataset")
def make_dataset_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (created; must be empty or absent).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Generate an iNaturalist-2021-train-mini-like corpus of JPEGs from photographs shipped by scikit-image.

    Each image is a random crop, flip, rescale and colour jitter of one of the source photographs, saved with
    long side 500 px and JPEG quality 75-95, under OUT/<label>/<id>.jpg, where the label is a species-like
    name per source photo. The folder loads both as a plain image folder and as a Hugging Face imagefolder.

    Cost, measured on 2 cores: about 38 KB per image (500,000 images: about 19 GB) and roughly
    400 images/s with both cores (500,000 images: about 20 minutes).
    """
    from autotune.console import progress_for
    from autotune.data import make_dataset

    summary = make_dataset(out, n=n, seed=seed, progress=progress_for(not as_json))
    _out(summary, "make-dataset", as_json)


@app.command("make-model")
def make_model_cmd(
    dataset: Annotated[Path, typer.Option("--dataset", help="Generated corpus to train on (autotune make-dataset).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed and data give the same weights.")] = 0,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Wall-clock cap; stopping early on it makes the result machine-dependent."),
    ] = None,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a small CLIP contrastively on a generated corpus, so rankings mean something offline.

    The result is a normal transformers CLIP checkpoint (safetensors + processor): pass it with --model PATH
    to any command. It knows only the corpus's 17 labels ("a photo of {label}").
    """
    from autotune.console import progress_for
    from autotune.models.train import train_model

    summary = train_model(dataset, out, seed=seed, minutes=minutes, progress=progress_for(not as_json), split=split)
    _out(summary, "make-model", as_json)


# ------------------------------------------------------------------------------------------ machine


@app.command("machine")
def machine_cmd(as_json: JsonOpt = False) -> None:
    """This machine's fingerprint: CPU, cores, memory, GPUs, torch/CUDA versions, and its machine id."""
    from autotune.machine import detect_machine

    info = detect_machine()
    data = info.to_dict()
    data["gpus"] = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in data["gpus"]) or "none"
    data["cpu_flags"] = " ".join(data["cpu_flags"])
    _out(data, "machine", as_json)


# -------------------------------------------------------------------------------------------- tuner


@app.command("study")
def study_cmd(
    device: Annotated[str, typer.Option("--device", help="Device mix to tune: cpu, gpu or cpu+gpu.")] = "cpu",
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="Trials that run a scan (infeasible ones excluded).")
    ] = 20,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop searching after this many seconds.")] = None,
    scan_size: Annotated[
        int | None,
        typer.Option(
            "--scan-size",
            min=1,
            help="Cap on the images of one trial (default: what each configuration needs). Too small for part "
            "of the space: refused before any trial runs, naming the minimum.",
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=2, help="Timed batch rounds (every replica one batch) per trial.")
    ] = 4,
    space: Annotated[
        str | None, typer.Option("--space", help="Search-space YAML file (default: the device's built-in).")
    ] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna RDB URL (default: sqlite file under studies/).")
    ] = None,
    study_name: Annotated[
        str | None, typer.Option("--study-name", help="Default: machine id + device + model + dataset.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model to tune with (default: the ViT-B/32 stand-in).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to scan (default: a generated corpus).")
    ] = None,
    image_column: ImageColumnOpt = None,
    split: SplitOpt = None,
    validate_repeats: Annotated[
        int,
        typer.Option(
            "--validate-repeats",
            min=0,
            help="Interleaved validation runs of the pick, the default and the profile in use (0: none).",
        ),
    ] = 3,
    save_profile: Annotated[
        bool,
        typer.Option("--save-profile", help="Put the pick in use even if it validates slower than the profile in use."),
    ] = False,
    sampler: Annotated[str, typer.Option("--sampler", help="Optuna sampler: tpe, gp or random.")] = "tpe",
    patience: Annotated[
        int | None, typer.Option("--patience", help="Stop after this many trials without improvement.")
    ] = None,
    trial_timeout: Annotated[
        float, typer.Option("--trial-timeout", help="Seconds before a trial is failed as hung.")
    ] = 600.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Tune the scan engine for this machine with Optuna and save the best configuration as its profile.

    Each trial runs the engine in a fresh process and times its steady state over --rounds batch rounds of
    every replica, as a full run runs (start-up, warm-up and drain recorded apart); clearly worse trials are
    pruned round by round. Trial 0 is the space's default. The pick is then validated against the default
    and the profile in use, on a longer scan of images the trials did not use, interleaved; the profile keeps
    both figures and becomes the one in use only if it validates faster (or with --save-profile). Every pick
    is kept under studies/profiles/<machine-id>/ (see `autotune profile list`). Running the same command
    again resumes the study. Inspect it with `autotune dashboard` or `autotune report`.
    """
    from autotune import report
    from autotune.tuner.study import StudyOptions, run_study

    if model and model.startswith("synthetic:") and not as_json:
        report.err_console.print(
            "[yellow]note: synthetic models have random weights: speed is real, rankings are not[/yellow]"
        )
    opts = StudyOptions(
        device=device,
        trials=trials,
        timeout_s=timeout,
        scan_size=scan_size,
        rounds=rounds,
        space=space,
        storage=storage,
        study_name=study_name,
        model=model,
        dataset=dataset,
        image_column=image_column,
        split=split,
        validate_repeats=validate_repeats,
        save_profile=save_profile,
        sampler=sampler,
        patience=patience,
        trial_timeout_s=trial_timeout,
        seed=seed,
    )
    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    outcome = run_study(opts, log=say)
    _out(outcome.summary(), "study", as_json)


profile_app = typer.Typer(help="Per-machine profiles saved by `autotune study`.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("list")
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
    from autotune import report
    from autotune.machine import detect_machine
    from autotune.tuner.profile import history

    entries = history(None if all_machines else detect_machine().machine_id)
    if as_json:
        report.emit_json(
            [{**p.to_dict(), "in_use": in_use, "legacy": p.legacy, "arch_key": p.arch_key} for p, in_use in entries]
        )
        return
    if not entries:
        report.console.print("[dim]profiles: none saved yet (run `autotune study`)[/dim]")
    for machine_id in dict.fromkeys(p.machine_id for p, _ in entries):
        _print_profile_table(machine_id, [(p, u) for p, u in entries if p.machine_id == machine_id])


def _print_profile_table(machine_id: str, entries: list[tuple[Any, bool]]) -> None:
    """One machine's profiles as a borderless table that fits 80 columns."""
    from rich.table import Table

    from autotune import report
    from autotune.tuner.profile import arch_short, short_config

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
    report.console.print(table)


@profile_app.command("use")
def profile_use_cmd(
    profile_id: Annotated[str, typer.Argument(help="A profile id from `autotune profile list`.")],
    as_json: JsonOpt = False,
) -> None:
    """Make a saved profile the one `autotune retrieve` uses for its model architecture on its machine."""
    from autotune.tuner.profile import arch_short, use_profile

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
    _out(data, f"profile {prof.id} now in use for {arch_short(prof.model_arch)}", as_json)


@profile_app.command("show")
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
    from autotune.errors import ConfigError
    from autotune.tuner.profile import find_profile

    prof = find_profile(profile, model=model, say=_note_line)
    if prof is None:
        where = "this machine" if model is None else f"{model}'s architecture on this machine"
        raise ConfigError(f"no profile for {where} yet: run `autotune study` first")
    data = prof.to_dict()
    data["config"] = prof.config.describe()
    _out(data, f"profile {prof.id or prof.machine_id}", as_json)


def _note_line(message: str) -> None:
    """One dim line on stderr, never folded (scripts grep it, terminals wrap it themselves)."""
    from autotune import report

    report.err_console.print(message, style="dim", soft_wrap=True, markup=False, highlight=False)


def _profile_rate(prof: Any) -> str:
    """How fast a profile runs, in words: the validated figure when there is one."""
    if prof.validated_images_per_s is not None:
        text = f"{prof.validated_images_per_s:.1f} images/s validated"
    else:
        text = f"{prof.images_per_s:.1f} images/s in its trials, not validated"
    return text + (", unstable" if prof.unstable else "")


@app.command("dashboard")
def dashboard_cmd(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8080,
    storage: Annotated[str | None, typer.Option("--storage", help="Study storage URL (default: studies/).")] = None,
) -> None:
    """Serve optuna-dashboard for the study storage on http://127.0.0.1:PORT (Ctrl-C to stop)."""
    from autotune.tuner.report import serve_dashboard

    serve_dashboard(storage, port)


@app.command("report")
def report_cmd(
    study_name: Annotated[
        str | None, typer.Option("--study-name", help="Default: this machine's latest study.")
    ] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Study storage URL (default: studies/).")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG plots into this folder.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Configurations to list.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The study's top configurations, their gain over trial 0 (the default), the predicted 500,000-image
    time, and optionally PNG plots (history, parameter importances, images/s against batch and producers)."""
    from autotune import report
    from autotune.tuner.report import study_report

    data = study_report(study_name=study_name, storage=storage, plots=plots, top=top)
    if as_json:
        report.emit_json(data)
        return
    report.print_rows(f"study {data['study']}: top configurations", data["top"])
    report.print_figures("summary", {k: v for k, v in data.items() if k not in ("top",)})


# ---------------------------------------------------------------------------------------- retrieval


@app.command("retrieve")
def retrieve_cmd(
    queries: Annotated[list[str] | None, typer.Argument(help='Text queries, e.g. "a photo of Felis catus".')] = None,
    queries_file: Annotated[
        Path | None, typer.Option("--queries-file", help="A file of queries, one per line.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Images to return per query.")] = 9,
    profile: Annotated[
        str, typer.Option("--profile", help="'auto' (this machine's profile), 'none', or a file.")
    ] = "auto",
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to search (default: the generated corpus).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP model (default: the ViT-B/32 stand-in).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Results folder: JSON/CSV, skipped list, contact sheet.")] = Path(
        "results"
    ),
    rescan: Annotated[
        bool, typer.Option("--rescan", help="Full scan with no index (the paper's way; for timing).")
    ] = False,
    no_index: Annotated[bool, typer.Option("--no-index", help="Do not build or use the embedding index.")] = False,
    index_dir: Annotated[
        Path | None, typer.Option("--index-dir", help="Index folder (default: under the cache).")
    ] = None,
    rebuild_index: Annotated[
        bool, typer.Option("--rebuild-index", help="Throw the stored index away and build it again.")
    ] = False,
    index_dtype: Annotated[str, typer.Option("--index-dtype", help="float16 (default) or float32.")] = "float16",
    image_column: ImageColumnOpt = None,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the images that best match each query.

    The first run scans every image with the engine (this machine's tuned profile, or a safe default) and
    builds an embedding index as it goes; an interrupted scan resumes where it stopped. Later runs embed only
    images added or changed since (ids stay stable), drop removed ones, and answer from the index in
    milliseconds. A change of model, backend or preprocessing rebuilds the index. --index-dir must be a new
    or empty folder, or an index this tool made: nothing else is ever deleted.
    """
    from autotune import report
    from autotune.console import progress_for
    from autotune.defaults import DEFAULT_MODEL, default_dataset
    from autotune.errors import ConfigError, DataError
    from autotune.retrieval import NoReadableImages, retrieve, safe_default_config, write_outputs, write_skipped
    from autotune.tuner.profile import find_profile

    texts = list(queries or [])
    if queries_file is not None:
        if not queries_file.is_file():
            raise ConfigError(f"queries file not found: {queries_file}")
        texts += [line.strip() for line in queries_file.read_text().splitlines() if line.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise ConfigError("empty query: give at least one non-empty text (argument or --queries-file)")
    if index_dtype not in ("float16", "float32"):
        raise ConfigError(f"--index-dtype must be float16 or float32, got {index_dtype!r}")
    say = (lambda m: None) if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    model = model or DEFAULT_MODEL
    ds = dataset or str(default_dataset(progress=progress_for(not as_json)))
    # Check the inputs before any chatter, so a mistake is one line.
    from autotune.data import open_source
    from autotune.models.loading import resolve_model

    open_source(ds, image_column, split)
    resolve_model(model)
    if index_dir is not None and not (rescan or no_index):
        from autotune.index import EmbeddingIndex

        EmbeddingIndex(index_dir).claim(create=False)
    if model.startswith("synthetic:"):
        say(
            "note: synthetic models have random weights: the ranking below is meaningless "
            "(train one offline with `autotune make-model`)"
        )
    prof = find_profile(profile, model=model, say=_note_line)
    if prof is None:
        config = safe_default_config()
        if profile == "auto":
            from autotune.tuner.profile import arch_short, model_arch

            # Printed even with --json (on stderr): an untuned scan is what the user must hear about.
            _note_line(
                f"no profile for this model's architecture ({arch_short(model_arch(model))}) on this machine: "
                f"using a safe default ({config.describe()}); run autotune study --model {model}"
            )
    else:
        from autotune.models.loading import weights_hash
        from autotune.tuner.guard import guard_ok_for

        if not guard_ok_for(prof, weights_hash(resolve_model(model)[0])):
            raise ConfigError(
                f"the profile runs {prof.config.cpu_backend}/{prof.config.gpu_precision}, whose accuracy guard was "
                f"never checked on {model}: run `autotune verify --model {model}` first (or --profile none)"
            )
        config = prof.config
        say(f"profile {prof.id or profile}: {config.describe()} ({_profile_rate(prof)})")
    try:
        result = retrieve(
            texts,
            dataset=ds,
            model=model,
            top_k=top_k,
            config=config,
            index_dir=index_dir,
            use_index=not no_index,
            rescan=rescan,
            rebuild_index=rebuild_index,
            index_dtype=index_dtype,
            image_column=image_column,
            split=split,
            progress=not as_json,
            say=say,
        )
    except NoReadableImages as exc:
        raise DataError(f"{exc}; reasons in {write_skipped(out, exc.skipped)}") from None
    write_outputs(result, ds, out, image_column, split)
    if as_json:
        report.emit_json(result.to_dict())
        return
    for qtext, hits in zip(result.queries, result.hits, strict=True):
        report.print_rows(
            f"top {top_k}: {qtext}",
            [
                {"rank": h.rank, "id": h.id, "score": round(h.score, 4), "label": h.label or "", "path": h.path}
                for h in hits
            ],
        )
    rate = f", {result.images_per_s:.1f} images/s" if result.images_per_s else ""
    report.console.print(
        f"{result.mode}: {result.images} images scanned, {len(result.skipped)} skipped, "
        f"scan {result.scan_seconds:.1f} s{rate}, query {result.query_ms:.1f} ms; config: {result.config}"
    )
    report.console.print(f"contact sheet: {result.outputs.get('contact_sheet_1')}  (results in {out}/)")


index_app = typer.Typer(help="Embedding indexes kept by `autotune retrieve`.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("list")
def index_list_cmd(as_json: JsonOpt = False) -> None:
    """Every index under the cache folder: dataset, model, backend, images, disk space."""
    import time

    from autotune import report
    from autotune.index import list_indexes

    rows = [s.to_dict() for s in list_indexes()]
    if as_json:
        report.emit_json(rows)
        return
    for row in rows:
        row.pop("path")
        row["updated"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["updated"]))
    report.print_rows(
        "indexes", rows, ["name", "model", "recipe", "records", "embedded", "skipped", "complete", "size_mb", "updated"]
    )


@index_app.command("rm")
def index_rm_cmd(
    name: Annotated[str, typer.Argument(help="An index name from `autotune index list`, or an index folder.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete an index to free its space; only folders this tool made, and only the files it wrote."""
    from autotune.index import remove_index

    _out(remove_index(name), "index rm", as_json)


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes its results.")] = Path("demo-output"),
    trials: Annotated[int, typer.Option("--trials", min=1, help="Study trials.")] = 4,
) -> None:
    """The main job on the embedded defaults: generate the corpus, train the small CLIP offline (once), run a
    short study, then a retrieval with the tuned profile; prints the profile, the results and the contact sheet."""
    from autotune.demo import run_demo

    run_demo(out=out, trials=trials)


@app.command("verify")
def verify_cmd(
    profile: Annotated[str, typer.Option("--profile", help="'auto' (this machine's) or a profile file.")] = "auto",
    model: Annotated[
        str | None, typer.Option("--model", help="The model retrievals will run (default: the profile's).")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Images for the validation sample.")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Minimum embedding cosine against fp32.")] = 0.99,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check a profile's accuracy guard on the model it will run (tuning on the random-weight stand-in
    finds speed, not quantisation error), and record the check in the profile. Exit 1 if it fails."""
    from autotune.console import bar
    from autotune.defaults import default_dataset
    from autotune.errors import ConfigError
    from autotune.tuner.guard import verify_profile
    from autotune.tuner.profile import find_profile, profile_path, save_profile

    # With --model, auto is the profile in use for that model's architecture.
    prof = find_profile(profile, model=model, warn=False)
    if prof is None:
        where = "this machine" if model is None else f"{model}'s architecture on this machine"
        raise ConfigError(f"no profile for {where} yet: run `autotune study` first")
    mid = model or prof.model
    from autotune.data import open_source

    sample = open_source(dataset or prof.dataset or str(default_dataset(progress=bar)), split=split)
    result = verify_profile(prof, mid, sample, threshold=threshold)
    # The check is written back into the file it read (a history entry for auto or an id).
    read_from = Path(profile)
    path = save_profile(prof, path=read_from if profile != "auto" and read_from.is_file() else profile_path(prof))
    data = result.to_dict()
    data["profile"] = str(path)
    _out(data, "verify", as_json)
    if not result.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- benches


@bench_app.command("preprocess")
def bench_preprocess_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Images to preprocess through each path.")] = 200,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Image folder/dataset (default: a generated corpus).")
    ] = None,
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reference (CLIPImageProcessor) vs fast preprocessing: images/s per core, ratio, and fidelity.

    Fidelity is the pixel difference (normalised units) and the cosine between embeddings of the same image
    through both paths, raw and after subtracting the corpus mean embedding.
    """
    from autotune.bench.preprocess import bench_preprocess
    from autotune.console import progress_for

    figures = bench_preprocess(n=n, dataset=dataset, model=model, progress=progress_for(not as_json), split=split)
    _out(figures, "bench preprocess", as_json)


@bench_app.command("quality")
def bench_quality_cmd(
    model: Annotated[str, typer.Option("--model", help="Model to evaluate (a trained make-model folder).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="The corpus the model was trained on (for labels).")],
    n: Annotated[int, typer.Option("--n", min=17, help="Held-out images to generate (another seed).")] = 340,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out images.")] = 12345,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot label accuracy and per-label precision@9 on held-out images (generated with another seed)."""
    from autotune.bench.quality import bench_quality
    from autotune.console import progress_for

    figures = bench_quality(
        model=model, dataset=dataset, n=n, seed=seed, progress=progress_for(not as_json), split=split
    )
    _out(figures, "bench quality", as_json)


@bench_app.command("ladder")
def bench_ladder_cmd(
    n: Annotated[int, typer.Option("--n", min=8, help="Images scanned by every stage (the same ones).")] = 192,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Image folder/dataset (default: a generated corpus).")
    ] = None,
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    query: Annotated[str, typer.Option("--query", help="Text query.")] = "a photo of Felis catus",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size for the batched and engine stages.")] = 32,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Profile for stage 6: 'auto' (this machine's) or a file.")
    ] = "auto",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a bar chart PNG (like the paper's Fig. 10).")
    ] = None,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The paper's speed-up ladder on the same N images, in one run: baseline, batched, producers + one model,
    several models (dynamic, then static), and this machine's tuned profile when there is one.

    Every stage's clock starts with its model loaded (stages 1-2 load it before, engine stages once every
    replica reports ready); engine start-up (spawn + model load) is shown apart, with steady-state images/s.
    Each stage's top-9 is checked against a brute-force top-9 with the same preprocessing and backend; the
    overlap with the baseline's top-9 is information only (on the random-weight stand-in, scores crowd so
    closely that any numerical change reorders them).
    """
    from autotune import report
    from autotune.bench.ladder import run_ladder

    prof = _load_profile_opt(profile, model)
    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    result = run_ladder(
        n=n, dataset=dataset, model=model, query=query, batch=batch, profile=prof, plot=plot, log=say, split=split
    )
    if as_json:
        report.emit_json(result)
        return
    report.print_rows(
        f"speed-up ladder ({result['n']} images, {result['cores']} cores, {model})",
        result["stages"],
        [
            "stage",
            "seconds",
            "startup_s",
            "images_per_s",
            "steady_images_per_s",
            "speedup",
            "exact_vs_bruteforce",
            "overlap_with_baseline",
        ],
    )
    report.print_figures("summary", {k: v for k, v in result.items() if k != "stages"})


def _load_profile_opt(profile: str | None, model: str) -> Any:
    """Resolve a --profile option: None/'none', 'auto' (this machine's, if any) or a file path."""
    if profile in (None, "none"):
        return None
    try:
        from autotune.tuner.profile import find_profile
    except ImportError:  # the tuner is optional for the ladder
        return None
    return find_profile(profile, model=model)


@bench_app.command("tuner")
def bench_tuner_cmd(
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to scan (default: the generated 2,000-image corpus).")
    ] = None,
    images: Annotated[int, typer.Option("--images", min=8, help="Images per full scan of the ground truth.")] = 1000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Interleaved full scans per configuration.")] = 3,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials of the default study.")] = 30,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", help="Backend of the ground truth (repeatable; default: all that pass the guard)."),
    ] = None,
    grid_out: Annotated[
        Path | None, typer.Option("--grid-out", help="Write the measured table here (for `bench samplers`).")
    ] = None,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Does the study's pick hold in the full run? About an hour on 2 cores.

    A ground truth of full scans (every guarded backend x replica/thread splits x batch 16/32 on the default CPU
    space, each scanned --repeats times, interleaved), then a default study, then its pick and the ground
    truth's best scanned again side by side. Reports pick / best (goal >= 0.95), the profile's validated
    prediction / the pick's full run (goal 0.90-1.10), trials and minutes to the pick, infeasible trials, and
    samplers replayed on the measured table.
    """
    from autotune import report
    from autotune.bench.tuner import bench_tuner
    from autotune.console import log_for, progress_for

    result = bench_tuner(
        model=model, dataset=dataset, images=images, repeats=repeats, trials=trials,
        progress=progress_for(not as_json), log=log_for(not as_json), split=split, backends=backend, grid_out=grid_out,
    )  # fmt: skip
    if as_json:
        report.emit_json(result)
        return
    report.print_rows("ground truth (full scans, median)", [
        {"config": f"{r['cpu_models']}x{r['cpu_threads']} b{r['cpu_batch']} {r['cpu_backend']}",
         "images_per_s": r["images_per_s"]} for r in result["ground_truth"]
    ])  # fmt: skip
    keep = {k: v for k, v in result.items() if k not in ("ground_truth", "samplers", "runs", "study_trial_states")}
    report.print_figures("bench tuner", keep)
    if result.get("samplers"):
        report.print_figures("samplers (trials to 95% of the best, median)", {
            name: r.get("trials_to_95_median") for name, r in result["samplers"]["results"]["samplers"].items()
        } | {"recommended": result["samplers"]["recommended"]})  # fmt: skip


@bench_app.command("index")
def bench_index_cmd(
    n: Annotated[int, typer.Option("--n", min=10, help="Embeddings in the generated index.")] = 500_000,
    dim: Annotated[int, typer.Option("--dim", min=1, help="Embedding size.")] = 512,
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries to time.")] = 20,
    dtype: Annotated[str, typer.Option("--dtype", help="Stored precision: float16 or float32.")] = "float16",
    as_json: JsonOpt = False,
) -> None:
    """Query latency from the embedding index: a generated N x DIM index (no scan), per-query milliseconds."""
    from autotune.bench.index import bench_index

    _out(bench_index(n=n, dim=dim, queries=queries, dtype=dtype), "bench index", as_json)


@bench_app.command("index-update")
def bench_index_update_cmd(
    n: Annotated[int, typer.Option("--n", min=100, help="Images in the generated corpus (cached once made).")] = 20_000,
    added: Annotated[float, typer.Option("--added", min=0.0001, max=1.0, help="Share of new images to add.")] = 0.01,
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help='Engine settings as JSON, e.g. \'{"cpu_models": 2, "cpu_backend": "onnx-int8", "cpu_batch": 16}\' '
            "(default: the safe default configuration).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """An index update after adding new images, against a full rebuild of the same database: scan seconds of
    each and their ratio (start-up stated apart), both through the real retrieval path."""
    import json

    from autotune import report
    from autotune.bench.index import bench_index_update
    from autotune.engine.config import EngineConfig
    from autotune.errors import ConfigError

    try:
        cfg = EngineConfig.from_dict(json.loads(config)) if config else None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--config must be a JSON object of engine settings: {exc}") from None
    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    result = bench_index_update(n=n, added=added, model=model, config=cfg, log=say)
    if as_json:
        report.emit_json(result)
        return
    rows = [
        {"run": k, **v, "changes": ", ".join(f"{n} {what}" for what, n in v["changes"].items())}
        for k, v in result["runs"].items()
    ]
    report.print_rows("index update vs full rebuild", rows)
    report.print_figures("summary", {k: v for k, v in result.items() if k != "runs"})


@bench_app.command("backends")
def bench_backends_cmd(
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 32,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Torch/runtime threads (default: all cores).")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Generated images to embed per pass.")] = 64,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", help="Backend to include (repeatable; default: all usable).")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Interleaved passes per backend.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Bare image-tower throughput per inference backend, side by side on the same batches and threads, with
    setup time (cold and cached) and the accuracy guard's figures (embedding cosine against fp32 eager)."""
    from autotune import report
    from autotune.bench.backends import bench_backends

    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    result = bench_backends(model=model, batch=batch, threads=threads, n=n, backends=backend, repeats=repeats, log=say)
    if as_json:
        report.emit_json(result)
        return
    report.print_rows(f"backends ({model}, batch {batch})", result["rows"])
    report.print_figures("summary", {k: v for k, v in result.items() if k != "rows"})


@bench_app.command("samplers")
def bench_samplers_cmd(
    grid: Annotated[
        Path,
        typer.Option(
            "--grid",
            help="Measured configurations (JSON): a list of rows (parameters + images_per_s; null = infeasible) or "
            '{"rows": [...], "default": {...}}, as `bench tuner --grid-out` writes.',
        ),
    ],
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per sampler.")] = 100,
    gp_seeds: Annotated[int, typer.Option("--gp-seeds", min=1, help="Seeds for GP (about 10x slower).")] = 10,
    budget: Annotated[int, typer.Option("--budget", min=1, help="Trials per replayed study.")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Replay the samplers (TPE, GP, random, hill climb) on a measured table, many seeds each, no scans: trials
    to reach 95% / 99% of the table's best (median, quartiles, share of seeds within the budget), and which
    sampler to use. Infeasible proposals count as trials spent."""
    from autotune import report
    from autotune.tuner.replay import load_grid_file, recommend, replay

    rows, default = load_grid_file(grid)
    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    result = replay(rows, default, seeds=seeds, budget=budget, seeds_for={"gp": min(gp_seeds, seeds)}, log=say)
    result["recommended"] = recommend(result)
    if as_json:
        report.emit_json(result)
        return
    figures = result["samplers"]
    # One column per sampler: a dozen figures read better down the page than across it. A null count is a
    # seed that never got there within the budget.
    names = next(iter(figures.values())).keys()
    report.print_rows(
        f"samplers replayed ({budget} trials per study)",
        [{"figure": k, **{s: f">{budget}" if f[k] is None else f[k] for s, f in figures.items()}} for k in names],
    )
    best = ", ".join(f"{k}={v}" for k, v in result["best_params"].items())
    report.print_figures("grid", {k: v for k, v in result.items() if k != "samplers"} | {"best_params": best})


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and return exit code 2."""
    import os

    from autotune.engine.lifecycle import terminate_as_interrupt

    # transformers warns on every load that torchvision is absent (its PIL processor is our reference anyway).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    terminate_as_interrupt()
    try:
        app(args=argv, standalone_mode=False)
    except AutotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, click.ClickException):
            exc.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
