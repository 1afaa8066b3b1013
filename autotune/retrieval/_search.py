"""Answering queries: a full scan, or an embedding index kept up to date with the database."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data.sources import HFDatasetSource, ImageSource, Record, open_source
from autotune.engine.config import EngineConfig, safe_default_for
from autotune.engine.ray_cluster import ENGINES, RAY_EXTRA, NodeFacts, NodeSizer, ray_available
from autotune.engine.runner import ScanResult, embed_queries_checked, run_scan
from autotune.errors import ConfigError
from autotune.index import (
    EmbeddingIndex,
    skipped_rows,
)
from autotune.models.loading import TEXT_MAX_LENGTH as TEXT_CONTEXT
from autotune.progress import Log, ProgressFactory, quiet
from autotune.retrieval._result import Hit, NoReadableImages, RetrievalResult
from autotune.retrieval._sync import (
    Scanner,
    SyncOutcome,
    existing_index,
    index_folder,
    safe_default_config,
    update_source,
)


def retrieve(
    queries: Sequence[str],
    *,
    dataset: str,
    model: str,
    top_k: int = 9,
    config: EngineConfig | None = None,
    index_dir: Path | None = None,
    use_index: bool = True,
    rescan: bool = False,
    rebuild_index: bool = False,
    index_dtype: str = "float16",
    image_column: str | None = None,
    split: str | None = None,
    progress: ProgressFactory | None = None,
    shard_images: int = 1024,
    log: Log | None = None,
    engine: str = "local",
    address: str | None = None,
    profile: str | None = None,
    update: bool = True,
) -> RetrievalResult:
    """Answer text queries over an image database.

    With the index (default), the first call scans every image with the engine and commits embedding
    shards as it goes (an interrupted scan resumes from them); later calls embed only images that are new or
    changed since, drop removed ones, and answer from the index in milliseconds. ``rescan`` or
    ``use_index=False`` runs the paper's full scan instead (no index); ``rebuild_index`` starts the index
    over. ``progress`` draws the scan's bar, ``log`` receives one-line news (splits, index rebuilt...).
    ``engine="ray"`` runs the scan (and the index build) on a Ray cluster at ``address`` (``auto``,
    ``HOST:PORT``, or None for a private Ray on this machine), each node sized from its own profile: same
    index, same top-k. ``update=False`` answers from the index as it stands (no listing, no scan; it must be
    complete). Raises :class:`NoReadableImages` when no image could be read.

    Example:
        >>> res = retrieve(["a photo of Felis catus"], dataset="data/", model="synthetic:tiny")
        >>> res.hits[0][0].locator, res.hits[0][0].score
    """
    say = log or quiet
    texts = [q.strip() for q in queries]
    if not texts or any(not q for q in texts):
        raise ConfigError("empty query: give at least one non-empty text")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    source = open_source(dataset, image_column, split)
    records = source.records() if rescan or not use_index else []
    splits = source.split_counts() if isinstance(source, HFDatasetSource) else {}
    if len(splits) > 1 or (splits and split):
        say("scanning " + " + ".join(f"{k} ({v:,} images)" for k, v in splits.items()))
    cfg = (config or safe_default_config()).validate()
    scanner = scan_engine(engine, address, say)
    q, truncated = embed_queries_checked(model, texts)
    if rescan or not use_index:
        result = _scan_answer(source, records, model, cfg, texts, q, top_k, progress, scanner)
    elif not update:
        index = existing_index(index_dir or index_folder(source, model, cfg, split), model)
        result = _index_answer(index, source, cfg, texts, q, top_k, SyncOutcome("index"))
    else:
        index, sync = update_source(
            source, model, cfg, index_dir=index_dir, rebuild=rebuild_index, dtype=index_dtype, split=split,
            progress=progress, shard_images=shard_images, log=say, scanner=scanner, profile=profile,
        )  # fmt: skip
        result = _index_answer(index, source, cfg, texts, q, top_k, sync)
    result.source, result.splits = source.describe(), splits
    result.truncated = truncated
    for n, cut in enumerate(truncated, start=1):
        if cut:
            result.notes.append(f"query {n} is longer than the text tower's {TEXT_CONTEXT} tokens: the rest is ignored")
            say(result.notes[-1])
    return result












def scan_engine(engine: str, address: str | None = None, log: Log | None = None) -> Scanner:
    """The scan function of an engine name: ``local`` (:func:`run_scan`) or ``ray`` (:func:`run_scan_ray`).

    Raises :class:`ConfigError` for another name, for an address without Ray, and for Ray not installed.

    Example:
        >>> scan_engine("local") is run_scan
        True
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local":
        if address is not None:
            raise ConfigError("--address needs --engine ray")
        return run_scan
    if not ray_available():
        raise ConfigError(RAY_EXTRA)
    from autotune.engine.ray_runner import run_scan_ray

    def scan_ray(source: ImageSource, model: str, config: EngineConfig, **options: Any) -> ScanResult:
        """The Ray engine, each node sized from its own machine's profile."""
        scan = run_scan_ray(source, model, config, address=address, sizer=node_sizer(model, config, log), **options)
        for node in scan.workers[0]["stats"].get("nodes_lost") or []:
            (log or quiet)(f"warning: Ray node {node} was lost mid-scan: its images were embedded on the nodes left")
        return scan

    return scan_ray


def node_profile(arch: str) -> dict[str, Any] | None:
    """The profile in use on this machine for ``arch`` (id and configuration), or None: run on each Ray node, so
    that a node is sized from what its own machine installed (a shared study's pick, `autotune profile pull`)."""
    from autotune.machine import detect_machine
    from autotune.tuner.profile import current_profile

    prof = current_profile(detect_machine().machine_id, arch)
    return None if prof is None else {"id": prof.id, "config": prof.config.to_dict()}


def node_sizer(model: str, config: EngineConfig, log: Log | None = None) -> NodeSizer:
    """How a Ray scan sizes a node: the profile in use for its machine id and the model's architecture (the one
    the node's own machine keeps, else the one this machine keeps for that machine id), else the safe default
    for its CPUs (``log`` hears a warning naming the node). The engine fits either to the CPUs Ray gives the
    node. The backend stays ``config``'s: it keys the index, so a node tuned on another backend runs its layout
    with the run's backend, and says so."""
    from autotune.tuner.profile import arch_short, current_profile, model_arch

    say, arch = log or quiet, model_arch(model)

    def size(node: NodeFacts) -> tuple[EngineConfig, str | None]:
        """(configuration, profile id) of one node."""
        if isinstance(node.local, dict):
            cfg, pid = EngineConfig.from_dict(node.local["config"]), str(node.local["id"])
        else:
            prof = current_profile(node.machine_id, arch)
            if prof is None:
                cfg = safe_default_for(max(node.cpus, 1))
                say(f"warning: Ray node {node.address} (machine {node.machine_id}) has no profile for "
                    f"{arch_short(arch)}: safe default ({cfg.describe()})")  # fmt: skip
                return cfg, None
            cfg, pid = prof.config, prof.id
        if cfg.cpu_models and cfg.cpu_backend != config.cpu_backend:
            say(f"note: Ray node {node.address} was tuned on {cfg.cpu_backend}; it runs {config.cpu_backend}, "
                "the backend this index is keyed on, with its tuned layout")  # fmt: skip
        return cfg, pid

    return NodeSizer(size=size, probe=functools.partial(node_profile, arch))






def _scan_answer(
    source: ImageSource,
    records: list[Record],
    model: str,
    cfg: EngineConfig,
    texts: list[str],
    q: np.ndarray,
    top_k: int,
    progress: ProgressFactory | None,
    scanner: Scanner = run_scan,
) -> RetrievalResult:
    """The paper's way: one full scan with the queries, no index."""
    # run_scan draws its own bar until it takes a ProgressFactory: a factory here means "show one".
    scan = scanner(source, model, cfg, queries=q, top_k=top_k, records=records, progress=progress)
    if scan.images == 0:
        raise NoReadableImages(source.describe(), scan.skipped)
    by_id = {r.id: r for r in records}
    hits = [
        [
            _hit(source, rank, int(i), float(sc), by_id[int(i)])
            for rank, (sc, i) in enumerate(zip(s, ids, strict=True), 1)
        ]
        for s, ids in zip(scan.topk_scores, scan.topk_ids, strict=True)
    ]
    res = RetrievalResult(
        texts, hits, "scan", scan.images, scan.skipped, scan.scan_seconds, 0.0, scan.images_per_s,
        cfg.describe(), None, [],
    )  # fmt: skip
    res.startup_s = scan.startup_s
    _ray_nodes(res, scan)
    return res


def _index_answer(
    index: EmbeddingIndex,
    source: ImageSource,
    cfg: EngineConfig,
    texts: list[str],
    q: np.ndarray,
    top_k: int,
    sync: SyncOutcome,
) -> RetrievalResult:
    """Answer from an index that is up to date."""
    t0 = time.perf_counter()
    index.load()
    load_s = time.perf_counter() - t0
    cat = index.catalog
    assert cat is not None
    if len(index) == 0:
        raise NoReadableImages(source.describe(), skipped_rows(cat))
    t0 = time.perf_counter()
    scores, ids = index.search(q, top_k)
    query_ms = 1000 * (time.perf_counter() - t0) / len(texts)
    row = {int(i): n for n, i in enumerate(cat["id"])}
    hits = [
        [
            _hit(source, rank, int(i), float(s), Record(int(i), cat["locator"][row[int(i)]], cat["label"][row[int(i)]]))
            for rank, (s, i) in enumerate(zip(srow, irow, strict=True), start=1)
        ]
        for srow, irow in zip(scores, ids, strict=True)
    ]
    built = sync.scan
    result = RetrievalResult(
        texts, hits, sync.mode, built.images if built else 0, skipped_rows(cat), built.scan_seconds if built else 0.0,
        query_ms, built.images_per_s if built else None, cfg.describe(), str(index.path), sync.notes,
    )  # fmt: skip
    result.changes = sync.counts
    result.startup_s = built.startup_s if built else 0.0
    if built is not None:
        _ray_nodes(result, built)
    result.outputs["index_load_seconds"] = f"{load_s:.3f}"
    return result






def _ray_nodes(result: RetrievalResult, scan: ScanResult) -> None:
    """Copy a Ray scan's per-node figures into the result, and note each node lost mid-scan."""
    stats = scan.workers[0]["stats"] if scan.workers else {}
    result.nodes = list(stats.get("nodes") or [])
    for address in stats.get("nodes_lost") or []:
        result.notes.append(f"Ray node {address} was lost mid-scan: its images were embedded on the nodes left")


def _hit(source: ImageSource, rank: int, rid: int, score: float, record: Record) -> Hit:
    """A Hit for one record."""
    return Hit(rank, rid, score, record.label, _record_path(source, record), record.locator)


def _record_path(source: ImageSource, record: Record) -> str:
    """A displayable path for a record (a file path for folders and shard members, dataset#index otherwise)."""
    return source.display_path(record)
