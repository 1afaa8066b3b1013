"""Keeping an index up to date with its database: the index's key and folder, the update, the safe default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.data.sources import ImageSource, open_source
from autotune.engine.config import EngineConfig, logical_cores, safe_default_for
from autotune.engine.runner import ScanResult, preprocess_spec_for, run_scan
from autotune.errors import ConfigError
from autotune.index import (
    EmbeddingIndex,
    IndexKey,
    IndexMeta,
    commit_update,
    default_index_dir,
    is_up_to_date,
    plan_update,
)
from autotune.models.backends import backend_revision
from autotune.models.calibration import Calibration, calibration_set, needs_calibration, stored_calibration
from autotune.models.facts import model_facts
from autotune.progress import Log, ProgressFactory, quiet


def safe_default_config() -> EngineConfig:
    """A configuration that works anywhere when no profile exists: one producer, one replica on the rest."""
    return safe_default_for(logical_cores())


def embedding_recipe(config: EngineConfig) -> str:
    """The inference path embeddings come from, e.g. ``cpu:onnx-int8`` or ``cpu:eager+gpu:fp16``.

    A CPU backend whose numerics were revised carries its revision (``cpu:openvino-int8.r2``): an index built
    by the earlier recipe is rebuilt, not updated with embeddings of another kind.
    """
    revision = backend_revision(config.cpu_backend)
    parts = [f"cpu:{config.cpu_backend}" + (f".r{revision}" if revision else "")] if config.cpu_models else []
    if config.gpu_models:
        # Only a GPU backend or decoder that changes the numbers joins the key: eager keeps old indexes valid.
        backend = "" if config.gpu_backend == "eager" else f"-{config.gpu_backend}"
        decode = "+gpu-decode" if config.decode == "gpu" else ""
        parts.append(f"gpu:{config.gpu_precision}{backend}{decode}")
    return "+".join(parts)


@dataclass
class SyncOutcome:
    """What bringing the index up to date did."""

    mode: str
    scan: ScanResult | None = None
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def update_index(
    dataset: str,
    model: str,
    config: EngineConfig | None = None,
    *,
    index_dir: Path | None = None,
    rebuild: bool = False,
    dtype: str = "float16",
    image_column: str | None = None,
    split: str | None = None,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
    profile: str | None = None,
) -> EmbeddingIndex:
    """Bring the index of ``dataset`` up to date exactly as :func:`retrieve` does, and return it, not loaded.

    ``profile`` names the profile whose ``config`` this is (recorded in the index metadata as the profile that
    built it; None for the safe default).

    Example:
        >>> idx = update_index("data/", "synthetic:tiny")  # doctest: +SKIP
        >>> idx.read_meta().complete
        True
    """
    source = open_source(dataset, image_column, split)
    cfg = (config or safe_default_config()).validate()
    index, _sync = update_source(
        source, model, cfg, index_dir=index_dir, rebuild=rebuild, dtype=dtype, split=split, progress=progress,
        shard_images=1024, log=log or quiet, scanner=run_scan, profile=profile,
    )  # fmt: skip
    return index


def existing_index(path: Path, model: str) -> EmbeddingIndex:
    """A complete index of ``model`` at ``path``, as it stands (:class:`ConfigError` in one line otherwise)."""
    index = EmbeddingIndex(path)
    meta = index.read_meta()
    if meta is None or not meta.complete:
        raise ConfigError(f"no complete index at {path}: run without --no-update to build it")
    if meta.key.model != model:
        raise ConfigError(f"index {path} was built with {meta.key.model}, not {model}: give --model {meta.key.model}")
    return index


def index_folder(source: ImageSource, model: str, config: EngineConfig, split: str | None = None) -> Path:
    """The default index folder of a database, model and configuration (its backend keys the folder)."""
    return default_index_dir(str(source.path), model, embedding_recipe(config), split)


def update_source(
    source: ImageSource,
    model: str,
    cfg: EngineConfig,
    *,
    index_dir: Path | None,
    rebuild: bool,
    dtype: str,
    split: str | None,
    progress: ProgressFactory | None,
    shard_images: int,
    log: Log,
    scanner: Scanner,
    profile: str | None,
) -> tuple[EmbeddingIndex, SyncOutcome]:
    """The index folder of this source and configuration, brought up to date."""
    index = EmbeddingIndex(index_dir or index_folder(source, model, cfg, split))
    calibration = _index_calibration(index, source, model, cfg, rebuild)
    key = _index_key(model, cfg, dtype, calibration)
    index.claim()
    job = _SyncJob(key, cfg, rebuild, progress, shard_images, log, calibration, scanner, profile)
    return index, _sync_index(index, source, job)


Scanner = Callable[..., ScanResult]
"""A scan engine: :func:`run_scan`'s signature (source, model, config, keyword options) -> ScanResult."""


def _index_key(model: str, cfg: EngineConfig, dtype: str, calibration: Calibration | None = None) -> IndexKey:
    """What an index's embeddings depend on: a change of any of it rebuilds the index.

    A statically quantised backend's recipe carries its calibration set's digest (``cpu:onnx-int8s@cal:...``).
    """
    facts = model_facts(model)  # weights hash and width from the cached sidecar: no second model load
    recipe = embedding_recipe(cfg) + (f"@cal:{calibration.digest}" if calibration else "")
    return IndexKey(model, facts.weights_hash, recipe, preprocess_spec_for(model).digest(), facts.embed_dim, dtype)


def _index_calibration(
    index: EmbeddingIndex, source: ImageSource, model: str, cfg: EngineConfig, rebuild: bool
) -> Calibration | None:
    """The calibration set of a statically quantised backend: the index's own while its file is kept.

    A calibration set is drawn from the database, so a changed database would draw another one, and with it
    another model and a full rebuild of the index; an index therefore keeps the set it was built with, and
    its updates embed new images with the same quantised model. ``--rebuild-index`` draws a new set.
    """
    if not cfg.cpu_models or not needs_calibration(cfg.cpu_backend):
        return None
    meta = None if rebuild else index.read_meta()
    if meta is not None and "@cal:" in meta.key.recipe:
        kept = stored_calibration(meta.key.recipe.rsplit("@cal:", 1)[1])
        if kept is not None:
            return kept
    return calibration_set(source, model)


@dataclass(frozen=True)
class _SyncJob:
    """What an index update is asked to do: the key, the engine and its configuration, who hears news."""

    key: IndexKey
    config: EngineConfig
    rebuild: bool
    progress: ProgressFactory | None
    shard_images: int
    log: Log
    calibration: Calibration | None
    scanner: Scanner
    profile: str | None


def _sync_index(index: EmbeddingIndex, source: ImageSource, job: _SyncJob) -> SyncOutcome:
    """Bring the index up to date with the database: nothing, a build, an update or a resumed one.

    A complete index of the same key and database is served without a lock; any write takes the writer
    lock, so a second writer is refused with one line.
    """
    fingerprint = source.fingerprint()
    key, log, notes = job.key, job.log, []
    meta = index.read_meta()
    if not job.rebuild and is_up_to_date(meta, key, fingerprint):
        return SyncOutcome("index")
    with index.writer():
        meta = index.read_meta()
        if job.rebuild or meta is None or meta.key != key:
            if meta is not None and meta.key != key:
                notes.append(f"index rebuilt: {meta.key.describe_difference(key)} since it was built")
            elif job.rebuild:
                notes.append("index rebuilt on request (--rebuild-index)")
            index.clear()
            meta = IndexMeta(key=key, dataset=str(source.path))
            index.write_meta(meta)
            for note in notes:
                log(note)
        elif is_up_to_date(meta, key, fingerprint):
            return SyncOutcome("index")  # another process finished it while we waited
        was_complete = meta.complete
        plan = plan_update(index, meta, source.records(), source.identities(), fingerprint)
        if plan.resumed:
            notes.append(f"resuming an interrupted index update: {plan.resumed:,} images already embedded")
            log(notes[-1])
        scan = None
        skipped: list[dict[str, Any]] = []
        if plan.todo:
            log(f"embedding {len(plan.todo):,} images into {index.path}")
            # The Ray engine writes these shards from its driver (no filesystem shared with the workers).
            scan = job.scanner(
                source, key.model, job.config, records=plan.todo,
                sink_factory=index.sink(key.dtype, job.shard_images), progress=job.progress,
                calibration=job.calibration.path if job.calibration else None,
            )  # fmt: skip
            skipped = scan.skipped
            meta.profile, meta.config = job.profile, job.config.describe()
        commit_update(index, meta, plan, skipped)
        mode = "index-resumed" if plan.resumed else ("index-updated" if was_complete else "index-new")
        if was_complete:
            notes.append(f"index updated: {plan.describe()}")
            log(notes[-1])
        return SyncOutcome(mode, scan, plan.counts, notes)
