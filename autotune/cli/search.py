"""Commands that answer queries, and the embedding indexes they keep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from autotune import console
from autotune.cli.options import ImageColumnOpt, JsonOpt, SplitOpt
from autotune.errors import ConfigError
from autotune.index import list_indexes, remove_index
from autotune.retrieval import RetrievalOptions, RetrievalResult, run_retrieval
from autotune.serve import DEFAULT_PORT, ServeOptions, serve

QueriesArg = Annotated[list[str] | None, typer.Argument(help='Text queries, e.g. "a photo of Felis catus".')]
QueriesFileOpt = Annotated[Path | None, typer.Option("--queries-file", help="A file of queries, one per line.")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="'auto' (this machine's profile), 'none', or a file.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Results folder: JSON/CSV, skipped list, contact sheet.")]
RescanOpt = Annotated[bool, typer.Option("--rescan", help="Full scan with no index (the paper's way; for timing).")]
NoIndexOpt = Annotated[bool, typer.Option("--no-index", help="Do not build or use the embedding index.")]
IndexDirOpt = Annotated[Path | None, typer.Option("--index-dir", help="Index folder (default: under the cache).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild-index", help="Throw the stored index away and build it again.")]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="Scan engine: 'local' (this machine) or 'ray' (a Ray cluster; the ray extra).")
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster with --engine ray: 'auto' or HOST:PORT (default: a private Ray here)."),
]


def retrieve_cmd(
    queries: QueriesArg = None,
    queries_file: QueriesFileOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Images to return per query.")] = 9,
    profile: ProfileOpt = "auto",
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to search (default: the generated corpus).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP model (default: the ViT-B/32 stand-in).")] = None,
    out: OutOpt = Path("results"),
    rescan: RescanOpt = False,
    no_index: NoIndexOpt = False,
    index_dir: IndexDirOpt = None,
    rebuild_index: RebuildOpt = False,
    index_dtype: Annotated[str, typer.Option("--index-dtype", help="float16 (default) or float32.")] = "float16",
    image_column: ImageColumnOpt = None,
    split: SplitOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    no_update: Annotated[
        bool, typer.Option("--no-update", help="Answer from the index as it stands: no listing, no scan.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Find the images that best match each query.

    The first run scans every image with the engine (this machine's tuned profile, or a safe default) and
    builds an embedding index as it goes; an interrupted scan resumes where it stopped. Later runs embed only
    images added or changed since (ids stay stable), drop removed ones, and answer from the index in
    milliseconds. A change of model, backend or preprocessing rebuilds the index. --index-dir must be a new
    or empty folder, or an index this tool made: nothing else is ever deleted. --engine ray runs the scan on a
    Ray cluster (each node sized from its own profile); the index is written here, by the driver.
    """
    options = RetrievalOptions(
        queries=(*(queries or []), *_read_queries(queries_file)), dataset=dataset, model=model, profile=profile,
        top_k=top_k, out=out, index_dir=index_dir, use_index=not no_index, rescan=rescan,
        rebuild_index=rebuild_index, index_dtype=index_dtype, image_column=image_column, split=split,
        engine=engine, address=address, update=not no_update,
    )  # fmt: skip
    result = run_retrieval(
        options, progress=console.progress_for(not as_json), log=console.log_for(not as_json), notice=console.note
    )
    if as_json:
        console.emit_json(result.to_dict())
    else:
        _print_result(result, top_k, out)


def _read_queries(path: Path | None) -> list[str]:
    """The non-blank lines of a queries file (none without one)."""
    if path is None:
        return []
    if not path.is_file():
        raise ConfigError(f"queries file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _print_result(result: RetrievalResult, top_k: int, out: Path) -> None:
    """Each query's top images as a table, then how they were found."""
    for qtext, hits in zip(result.queries, result.hits, strict=True):
        console.print_rows(
            f"top {top_k}: {qtext}",
            [
                {"rank": h.rank, "id": h.id, "score": round(h.score, 4), "label": h.label or "", "path": h.path}
                for h in hits
            ],
        )
    rate = f", {result.images_per_s:.1f} images/s" if result.images_per_s else ""
    console.echo(
        f"{result.mode}: {result.images} images scanned, {len(result.skipped)} skipped, "
        f"scan {result.scan_seconds:.1f} s{rate}, query {result.query_ms:.1f} ms; config: {result.config}"
    )
    if result.nodes:  # a Ray scan: what each node embedded
        console.echo("Ray nodes: " + "; ".join(f"{n['address']} {n['images']} images" + (" (lost mid-scan)"
                                                if n["lost"] else "") for n in result.nodes))  # fmt: skip
    console.echo(f"contact sheet: {result.outputs.get('contact_sheet_1')}  (results in {out}/)")


def serve_cmd(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Images to search (default: the generated corpus).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP model (default: the ViT-B/32 stand-in).")] = None,
    profile: ProfileOpt = "auto",
    index_dir: IndexDirOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback is reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one, named in the first line).")] = DEFAULT_PORT,
    no_update: Annotated[
        bool, typer.Option("--no-update", help="Serve the index as it stands (refused if there is none).")
    ] = False,
    index_dtype: Annotated[str, typer.Option("--index-dtype", help="float16 (default) or float32.")] = "float16",
    image_column: ImageColumnOpt = None,
    split: SplitOpt = None,
) -> None:
    """Answer text queries over HTTP in milliseconds, with a search page.

    Brings the index up to date exactly as `retrieve` would (--no-update: uses it as it stands), loads the
    text tower once, and serves until Ctrl-C or SIGTERM:

    \b
      GET  /                      the search page (/?q=a+red+fox shows the top 9 as a 3 x 3 grid)
      GET  /api/search?q=...&k=9  {"query", "truncated", "results": [{"rank", "id", "score", "label", "url"}]}
      POST /api/search            {"queries": [...], "k": 9}: a list of those, embedded as one batch
      GET  /api/images/ID         the original image; /api/thumbnails/ID a small JPEG
      GET  /api/info              model, backend, images, index generation, the profile that built it

    Images are named by their index id only. A new generation committed by `retrieve` in another process is
    picked up without dropping requests. There is no authentication: keep the default loopback --host unless
    the network is yours.
    """
    if index_dtype not in ("float16", "float32"):
        raise ConfigError(f"--index-dtype must be float16 or float32, got {index_dtype!r}")
    options = ServeOptions(
        dataset=dataset, model=model, profile=profile, index_dir=index_dir, image_column=image_column, split=split,
        index_dtype=index_dtype, host=host, port=port, update=not no_update,
    )  # fmt: skip
    serve(options, progress=console.progress_for(True), log=console.log_for(True), notice=console.note)


def index_list_cmd(as_json: JsonOpt = False) -> None:
    """Every index under the cache folder: dataset, model, backend, images, disk space."""
    rows = [s.to_dict() for s in list_indexes()]
    if as_json:
        console.emit_json(rows)
        return
    for row in rows:
        row.pop("path")
        row["updated"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["updated"]))
    console.print_rows(
        "indexes", rows, ["name", "model", "recipe", "records", "embedded", "skipped", "complete", "size_mb", "updated"]
    )


def index_rm_cmd(
    name: Annotated[str, typer.Argument(help="An index name from `autotune index list`, or an index folder.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete an index to free its space; only folders this tool made, and only the files it wrote."""
    console.show(remove_index(name), "index rm", as_json)
