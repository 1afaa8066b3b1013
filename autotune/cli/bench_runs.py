"""`autotune bench ...` commands that time whole runs: full scans of several configurations, the first retrieval
against a rescan, index builds and updates, the Ray engine against the local one, and the prepared GPU check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from autotune import console
from autotune.bench.configs import bench_configs
from autotune.bench.index import bench_first_run, bench_index, bench_index_update
from autotune.bench.serve import CLIENTS, bench_serve
from autotune.cli.options import JsonOpt, ModelOpt, SplitOpt
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError, reraise_as
from autotune.index import SCAN_MODES
from autotune.models.facts import STAND_IN
from autotune.progress import Log


def bench_index_cmd(
    n: Annotated[int, typer.Option("--n", min=10, help="Embeddings in the generated index.")] = 500_000,
    dim: Annotated[int, typer.Option("--dim", min=1, help="Embedding size.")] = 512,
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries to time.")] = 20,
    dtype: Annotated[str, typer.Option("--dtype", help="Stored precision: float16 or float32.")] = "float16",
    scan: Annotated[
        str, typer.Option("--scan", help="Query path: rerank (float16 pass, exact re-rank; default) or exact.")
    ] = "rerank",
    as_json: JsonOpt = False,
) -> None:
    """Query latency from the embedding index: a generated N x DIM index (no scan), per-query milliseconds."""
    if scan not in SCAN_MODES:
        raise ConfigError(f"--scan must be one of {', '.join(SCAN_MODES)}, got {scan!r}")
    console.show(bench_index(n=n, dim=dim, queries=queries, dtype=dtype, scan=scan), "bench index", as_json)


def bench_serve_cmd(
    n: Annotated[int, typer.Option("--n", min=100, help="Images in the generated index.")] = 500_000,
    model: ModelOpt = STAND_IN,
    clients: Annotated[
        list[int] | None,
        typer.Option("--clients", min=1, help="Concurrent clients per level (repeat; default 1 4 16)."),
    ] = None,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests per client level.")] = 160,
    retrieve_runs: Annotated[
        int, typer.Option("--retrieve-runs", min=0, help="`autotune retrieve` processes timed beside the server.")
    ] = 3,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="A folder whose images the rows show (default: the corpus).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The server's latency and queries/s under 1, 4 and 16 clients, beside `autotune retrieve` processes.

    Writes a generated N x 512 index (as `bench index`) whose rows show the generated corpus's images, starts
    `autotune serve --no-update` on it (a free loopback port, another process), sends a fixed number of distinct
    queries at each client level, and between levels times `autotune retrieve --no-update` answering one of the
    same queries from the same index (its top 9 must match the server's). First, the index's exact and
    re-ranked scans are timed on the same queries, with recall@9. Stops the server when done.
    """
    result = bench_serve(
        n=n, model=model, clients=tuple(clients or CLIENTS), requests=requests, retrieve_runs=retrieve_runs,
        dataset=dataset, log=console.log_for(not as_json),
    )  # fmt: skip
    console.show(result, "bench serve", as_json)


ConfigJsonOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help='Engine settings as JSON, e.g. \'{"cpu_models": 2, "cpu_backend": "onnx-int8", "cpu_batch": 16}\' '
        "(default: the safe default configuration).",
    ),
]


def config_json(text: str | None) -> EngineConfig | None:
    """The engine configuration given as JSON on the command line (None: the command's default)."""
    with reraise_as(ConfigError, "--config must be a JSON object of engine settings", ValueError, TypeError):
        return EngineConfig.from_dict(json.loads(text)) if text else None


def bench_configs_cmd(
    config: Annotated[
        list[str],
        typer.Option(
            "--config",
            help='One configuration as JSON (repeat the option), e.g. \'{"cpu_models": 2, '
            '"cpu_threads": 1, "cpu_batch": 16, "cpu_backend": "onnx-int8"}\'.',
        ),
    ],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Images to scan (default: the generated corpus); repeat it to compare shapes of one database "
            "(files, shards, a save_to_disk dataset): same configurations, interleaved, top-9 compared.",
        ),
    ] = None,
    model: ModelOpt = STAND_IN,
    images: Annotated[int, typer.Option("--images", min=1, help="Images in each full scan.")] = 2000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Interleaved passes over the configurations.")] = 3,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Full scans of several engine configurations side by side (a hand-found config against a profile's,
    one backend against another), or of one database in several shapes: interleaved passes, median images/s
    of each and its share of the best; with several --dataset, each one's images/s over the first's with the
    same configuration and whether their top-9 images (compared by bytes) agree."""
    cfgs = [c for c in (config_json(text) for text in config) if c is not None]
    result = bench_configs(
        cfgs, datasets=dataset or (), model=model, images=images, repeats=repeats, split=split,
        log=_passes_log(as_json),
    )  # fmt: skip
    if as_json:
        console.emit_json(result)
        return
    console.print_rows(
        f"full scans of {images} images, {repeats} interleaved passes (median)",
        [{k: v for k, v in row.items() if k != "settings"} for row in result["rows"]],
    )
    if "top9_agree" in result:
        console.print_figures("shapes", {k: result[k] for k in ("top9_agree", "top9_overlap_min")})


def bench_first_run_cmd(
    n: Annotated[int, typer.Option("--n", min=10, help="Images in the generated corpus (cached once made).")] = 10_000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Rounds of one build and one rescan.")] = 3,
    model: ModelOpt = STAND_IN,
    config: ConfigJsonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The first retrieval, which builds the index, against a --rescan of the same database: images/s of each
    (median of interleaved rounds) and their ratio, both through the real retrieval path."""
    cfg = config_json(config)
    say = _passes_log(as_json)
    result = bench_first_run(n=n, repeats=repeats, model=model, config=cfg, log=say)
    rows = [{"run": name, "round": i + 1, **row} for name, rs in result["runs"].items() for i, row in enumerate(rs)]
    _show_runs(result, "first retrieval (index build) vs --rescan", rows, as_json)


def bench_index_update_cmd(
    n: Annotated[int, typer.Option("--n", min=100, help="Images in the generated corpus (cached once made).")] = 20_000,
    added: Annotated[float, typer.Option("--added", min=0.0001, max=1.0, help="Share of new images to add.")] = 0.01,
    model: ModelOpt = STAND_IN,
    config: ConfigJsonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An index update after adding new images, against a full rebuild of the same database: scan seconds of
    each and their ratio (start-up stated apart), both through the real retrieval path."""
    cfg = config_json(config)
    say = _passes_log(as_json)
    result = bench_index_update(n=n, added=added, model=model, config=cfg, log=say)
    rows = [
        {"run": k, **v, "changes": ", ".join(f"{n} {what}" for what, n in v["changes"].items())}
        for k, v in result["runs"].items()
    ]
    _show_runs(result, "index update vs full rebuild", rows, as_json)


def bench_index_scale_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Entries in the database (links to --base images).")] = 500_000,
    base: Annotated[
        int, typer.Option("--base", min=17, help="Generated images the entries link to (cached once made).")
    ] = 2000,
    as_json: JsonOpt = False,
) -> None:
    """Everything a retrieval does before its first image, at scale: listing, identities and the update plan of
    N entries with no index (plan_s), then with a complete index over them, the check that finds it up to
    date (up_to_date_check_s) and the plan again (replan_s), each in a fresh process; peak_rss_mb is the
    largest peak memory of the three. Goal on 2 cores at 500,000 entries: both under 20 s, under 2 GB.

    The entries are hard links to a small generated corpus under distinct names (distinct images, the same
    bytes); the complete index holds placeholder embeddings, since scanning 500,000 images takes hours.
    """
    from autotune.bench.scale import bench_index_scale

    result = bench_index_scale(n=n, base=base, progress=console.progress_for(not as_json), log=_passes_log(as_json))
    console.show(result, "bench index-scale", as_json)


def _show_runs(result: dict[str, Any], title: str, rows: list[dict[str, Any]], as_json: bool) -> None:
    """A run-against-run benchmark: its JSON, or a table of its runs and the summary figures."""
    if as_json:
        console.emit_json(result)
        return
    console.print_rows(title, rows)
    console.print_figures("summary", {k: v for k, v in result.items() if k != "runs"})


def bench_gpu_check_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the stages' JSON files (at most 8 files).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="No CUDA needed: tiny model, 64 images, CPU stages, same JSON files.")
    ] = False,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages", help="Only these stages, comma-separated (corpus,tests,ladder,decode,study,retrieve)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The prepared GPU check (`make gpu-check OUT=DIR`): gpu tests, ladder, decode placement, a short study and
    a 500,000-image retrieval against the goal of 8,400 images/s, each stage's JSON written as it ends.

    Every stage runs in its own process under its own time budget (the whole check ends inside 5 minutes); a
    failed or cut-off stage is recorded in its JSON and the next stage still runs. Exit code 1 if any failed.
    `--stages corpus,study,retrieve` runs a part (always in the check's order; retrieve uses study's profile).
    """
    from autotune.bench.gpu_check import STAGES, run_gpu_check

    only = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else STAGES
    summary = run_gpu_check(out, dry_run=dry_run, say=console.note, only=only)
    console.show(summary, "bench gpu-check", as_json)
    if not summary["ok"]:
        raise typer.Exit(1)


def bench_ray_cmd(
    n: Annotated[
        int | None, typer.Option("--n", min=8, help="Images scanned by each run (default: the whole database).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to scan (default: the generated 2,000-image corpus).")
    ] = None,
    model: ModelOpt = STAND_IN,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Interleaved local/Ray pairs; medians.")] = 3,
    profile: Annotated[
        str, typer.Option("--profile", help="Both engines' configuration: 'auto' (this machine's), 'none', a file.")
    ] = "auto",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster: 'auto' or HOST:PORT (default: a private Ray here).")
    ] = None,
    split: SplitOpt = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", min=1, help="Start a cluster of this many Ray nodes on this machine (loopback "
                     "only, the cores split between them), each sized by its own profile; stopped at the end."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The Ray engine against the local engine on the same images, model and configuration (the ray extra).

    Runs alternate (local, Ray, local, Ray...); each engine's images/s is over its whole run, replica start-up
    included (Ray's preprocessing runs ahead while its actors load), Ray's own start-up is reported apart
    (ray_startup_s), and each pair's top-9 must be the same.
    The ratio ray_over_local is the Ray engine's overhead on one machine (goal >= 0.85);
    steady_ray_over_local compares both from loaded replicas (fair where the actors preprocess their own
    batches, preprocessing: inside the actors).
    """
    from autotune.bench.ray import bench_ray  # imports the engines: not for --help
    from autotune.retrieval import choose_config

    config = choose_config(profile, model, log=console.log_for(not as_json), notice=console.note)
    result = bench_ray(
        n=n, dataset=dataset, model=model, config=config, repeats=repeats, address=address, split=split,
        log=_passes_log(as_json), nodes=nodes,
    )  # fmt: skip
    if as_json:
        console.emit_json(result)
        return
    console.print_rows("runs (interleaved)", [{k: v for k, v in r.items() if k != "ray_nodes_detail"}
                                              for r in result["runs"]])  # fmt: skip
    console.print_figures("bench ray", {k: v for k, v in result.items() if k != "runs"})


def _passes_log(as_json: bool) -> Log:
    """Where a whole-run benchmark reports each run as it ends: the log, or with --json dim lines on stderr
    (stdout stays one JSON document). A run cut off by a timeout still leaves the passes it measured."""
    return console.log if not as_json else console.note
