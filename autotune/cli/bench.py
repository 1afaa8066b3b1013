"""`autotune bench ...`: benchmarks measured side by side in one run, printed as ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autotune import console
from autotune.bench.tuner import SPLITS, bench_tuner
from autotune.cli.options import DatasetPathOpt, JsonOpt, ModelOpt, SplitOpt
from autotune.defaults import default_dataset
from autotune.errors import ConfigError
from autotune.models.facts import STAND_IN
from autotune.tuner.profile import Profile, find_profile
from autotune.tuner.replay import load_grid_file, recommend, replay


def bench_preprocess_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Images to preprocess through each path.")] = 200,
    dataset: DatasetPathOpt = None,
    model: ModelOpt = STAND_IN,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reference (CLIPImageProcessor) vs fast preprocessing: images/s per core, ratio, and fidelity.

    Fidelity is the pixel difference (normalised units) and the cosine between embeddings of the same image
    through both paths, raw and after subtracting the corpus mean embedding.
    """
    from autotune.bench.preprocess import bench_preprocess  # imports torch: not for --help

    figures = bench_preprocess(
        n=n, dataset=dataset, model=model, progress=console.progress_for(not as_json), split=split
    )
    console.show(figures, "bench preprocess", as_json)


def bench_quality_cmd(
    model: Annotated[str, typer.Option("--model", help="Model to evaluate (a trained make-model folder).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="The corpus the model was trained on (for labels).")],
    n: Annotated[int, typer.Option("--n", min=17, help="Held-out images to generate (another seed).")] = 340,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out images.")] = 12345,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot label accuracy and per-label precision@9 on held-out images (generated with another seed)."""
    from autotune.bench.quality import bench_quality  # imports torch: not for --help

    figures = bench_quality(
        model=model, dataset=dataset, n=n, seed=seed, progress=console.progress_for(not as_json), split=split
    )
    console.show(figures, "bench quality", as_json)


def bench_ladder_cmd(
    n: Annotated[int, typer.Option("--n", min=8, help="Images scanned by every stage (the same ones).")] = 192,
    dataset: DatasetPathOpt = None,
    model: ModelOpt = STAND_IN,
    query: Annotated[str, typer.Option("--query", help="Text query.")] = "a photo of Felis catus",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size for the batched and engine stages.")] = 32,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Profile for stage 6: 'auto' (this machine's) or a file.")
    ] = "auto",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a bar chart PNG (like the paper's Fig. 10).")
    ] = None,
    split: SplitOpt = None,
    paired_rounds: Annotated[
        int,
        typer.Option("--paired-rounds", min=0, help="Alternating runs of stage 3 and the bare forward: their ratio."),
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """The paper's speed-up ladder on the same N images, in one run: baseline, batched, producers + one model,
    several models (dynamic, then static), and this machine's tuned profile when there is one.

    Every stage's clock starts with its model loaded (stages 1-2 load it before, engine stages once every
    replica reports ready); engine start-up (spawn + model load) is shown apart, with steady-state images/s.
    The engine's steady state against the bare forward of the same backend and threads is the median of
    paired, alternating runs (a drifting machine makes one-off figures of either meaningless); each engine
    stage states where its time went per image (preprocessing and its share of the cores, forward, copies,
    waits). Each stage's top-9 is checked against a brute-force top-9 with the same preprocessing and backend; the
    overlap with the baseline's top-9 is information only (on the random-weight stand-in, scores crowd so
    closely that any numerical change reorders them).
    """
    prof = _load_profile_opt(profile, model)
    say = console.log_for(not as_json)
    from autotune.bench.ladder import run_ladder  # imports torch: not for --help

    result = run_ladder(
        n=n, dataset=dataset, model=model, query=query, batch=batch, profile=prof, plot=plot, log=say, split=split,
        paired_rounds=paired_rounds,
    )  # fmt: skip
    if as_json:
        console.emit_json(result)
        return
    console.print_rows(
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
            "preprocess_core_share",
            "roofline_share",
        ],
    )
    console.print_figures("summary", {k: v for k, v in result.items() if k != "stages"})


def _load_profile_opt(profile: str | None, model: str) -> Profile | None:
    """Resolve a --profile option: None/'none', 'auto' (this machine's, if any) or a file path."""
    if profile in (None, "none"):
        return None
    return find_profile(profile, model=model)


def bench_tuner_cmd(
    model: ModelOpt = STAND_IN,
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
    layout: Annotated[
        list[str] | None,
        typer.Option(
            "--layout",
            help="Replicas x threads of the ground truth, e.g. 2x1 (repeatable; default: 1x1, 1x2 and 2x1).",
        ),
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
    result = bench_tuner(
        model=model, dataset=dataset, images=images, repeats=repeats, trials=trials,
        progress=console.progress_for(not as_json), log=console.log_for(not as_json), split=split, backends=backend,
        grid_out=grid_out, splits=[_layout(v) for v in layout] if layout else SPLITS,
    )  # fmt: skip
    if as_json:
        console.emit_json(result)
        return
    console.print_rows("ground truth (full scans, median)", [
        {"config": f"{r['cpu_models']}x{r['cpu_threads']} b{r['cpu_batch']} {r['cpu_backend']}",
         "images_per_s": r["images_per_s"]} for r in result["ground_truth"]
    ])  # fmt: skip
    tables = ("ground_truth", "samplers", "runs", "study_trial_states", "study_trials_table")
    keep = {k: v for k, v in result.items() if k not in tables}
    console.print_figures("bench tuner", keep)
    if result.get("samplers"):
        console.print_figures("samplers (trials to 95% of the best, median)", {
            name: r.get("trials_to_95_median") for name, r in result["samplers"]["results"]["samplers"].items()
        } | {"recommended": result["samplers"]["recommended"]})  # fmt: skip


def _layout(text: str) -> tuple[int, int]:
    """Parse ``RxT`` (replicas x threads each) into a pair, or a one-line usage error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--layout {text!r}: expected replicas x threads, like 2x1")
    return int(parts[0]), int(parts[1])


def bench_roofline_cmd(
    model: ModelOpt = STAND_IN,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Images to time the preprocessing on (default: the generated corpus)."),
    ] = None,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.05, help="Seconds each precision's matrix products are timed for.")
    ] = 1.0,
    save: Annotated[
        bool,
        typer.Option("--save/--no-save", help="Store it beside this machine's profiles (ladder and report use it)."),
    ] = True,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """This machine's limit for a model: matrix-product GFLOP/s per precision (fp32, bf16, int8) at the image
    tower's own shapes on every core, the kernel oneDNN chose (AMX, VNNI, AVX-512...), and the ceilings in
    images/s they imply, with and without the preprocessing's cost per image per core.

    Stored per machine id and architecture under studies/profiles/<machine-id>/; `bench ladder`, `report` and
    `profile show` then state their figures as a share of the ceiling.
    """
    from autotune.bench.roofline import measure_roofline  # imports torch: not for --help
    from autotune.tuner.roofline import save_roofline

    roof = measure_roofline(model, dataset, split=split, seconds=seconds, log=console.log_for(not as_json))
    data = roof.to_dict()
    if save:
        data["saved_to"] = str(save_roofline(roof))
    if as_json:
        console.emit_json(data)
        return
    console.print_rows(
        f"matrix products at {model}'s shapes ({roof.cores} cores; {', '.join(roof.isa) or 'no vector flags read'})",
        [
            {
                "precision": p.precision,
                "gflops": p.gflops,
                "images_per_s": data["ceilings_images_per_s"].get(p.precision),
                "kernel": p.kernel or p.error,
            }
            for p in roof.peaks
        ],
        ["precision", "gflops", "images_per_s", "kernel"],
    )
    console.print_figures("roofline", {k: v for k, v in data.items() if k not in ("peaks", "ceilings_images_per_s")})


def bench_backends_cmd(
    model: ModelOpt = STAND_IN,
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
    setup time (cold and cached), the accuracy guard's figures (embedding cosine against fp32 eager), and
    GFLOP/s with their share of this machine's measured peak at the backend's precision (`bench roofline`
    first): a bf16 or int8 backend far below its peak is not running the AMX/VNNI kernels it should."""
    say = console.log_for(not as_json)
    from autotune.bench.backends import bench_backends  # imports torch: not for --help

    result = bench_backends(model=model, batch=batch, threads=threads, n=n, backends=backend, repeats=repeats, log=say)
    if as_json:
        console.emit_json(result)
        return
    console.print_rows(f"backends ({model}, batch {batch})", result["rows"])
    console.print_figures("summary", {k: v for k, v in result.items() if k != "rows"})


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
    rows, default = load_grid_file(grid)
    say = console.log_for(not as_json)
    result = replay(rows, default, seeds=seeds, budget=budget, seeds_for={"gp": min(gp_seeds, seeds)}, log=say)
    result["recommended"] = recommend(result)
    if as_json:
        console.emit_json(result)
        return
    figures = result["samplers"]
    # One column per sampler: a dozen figures read better down the page than across it. A null count is a
    # seed that never got there within the budget.
    names = next(iter(figures.values())).keys()
    console.print_rows(
        f"samplers replayed ({budget} trials per study)",
        [{"figure": k, **{s: f">{budget}" if f[k] is None else f[k] for s, f in figures.items()}} for k in names],
    )
    best = ", ".join(f"{k}={v}" for k, v in result["best_params"].items())
    console.print_figures("grid", {k: v for k, v in result.items() if k != "samplers"} | {"best_params": best})


def bench_vendor_cmd(
    profile: Annotated[
        str,
        typer.Option("--profile", help="Profile to run: auto (this machine's, in use), an id or a file."),
    ] = "auto",
    config: Annotated[
        str | None, typer.Option("--config", help="Engine settings as JSON instead of a profile (an openvino backend).")
    ] = None,
    dataset: DatasetPathOpt = None,
    model: ModelOpt = STAND_IN,
    images: Annotated[int, typer.Option("--images", min=1, help="Images in each full retrieval.")] = 2000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Interleaved passes of the three runs.")] = 3,
    seconds: Annotated[int, typer.Option("--seconds", min=3, help="benchmark_app's run time (-t) per pass.")] = 15,
    as_json: JsonOpt = False,
) -> None:
    """OpenVINO's own tuner beside ours: `benchmark_app -hint throughput` on the very IR our replicas load (the
    model alone, at our batch size, on the configuration's cores), our bare forward with the same configuration,
    and our full retrieval (decode and preprocessing included), interleaved; medians, bare_over_vendor and
    full_over_vendor. The configuration is the profile in use (--profile) or --config."""
    from autotune.bench.vendor import bench_vendor
    from autotune.cli.bench_runs import config_json

    cfg = config_json(config)
    if cfg is None:
        prof = find_profile(profile, model=model)
        if prof is None:
            raise ConfigError("no profile in use for this model here: run autotune study, or pass --config")
        cfg = prof.config
    data = str(dataset) if dataset else str(default_dataset())
    result = bench_vendor(cfg, dataset=data, model=model, images=images, repeats=repeats, seconds=seconds,
                          log=console.log_for(not as_json))  # fmt: skip
    console.show(result, "bench vendor", as_json)
