"""Full retrieval: scan with the tuned profile (building a resumable index), answer from the index."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.console import progress_for
from autotune.data.sources import HFDatasetSource, ImageSource, Record
from autotune.engine.config import EngineConfig, logical_cores
from autotune.engine.runner import ScanResult, preprocess_spec_for, run_scan
from autotune.errors import ConfigError, DataError
from autotune.index import (
    EmbeddingIndex,
    IndexKey,
    IndexMeta,
    commit_update,
    default_index_dir,
    plan_update,
    skipped_rows,
)


def safe_default_config() -> EngineConfig:
    """A configuration that works anywhere when no profile exists: one producer, one replica on the rest."""
    cores = logical_cores()
    producers = max(1, cores // 4)
    return EngineConfig(producers=producers, cpu_models=1, cpu_threads=max(1, cores - producers), cpu_batch=32)


@dataclass
class Hit:
    """One retrieved image: its stable id, score, label, locator and a displayable path."""

    rank: int
    id: int
    score: float
    label: str | None
    path: str
    locator: str = ""


class NoReadableImages(DataError):
    """Not one image of the database could be read; ``skipped`` says why for each."""

    def __init__(self, where: str, skipped: list[dict[str, Any]]) -> None:
        reasons = Counter(str(s.get("reason", "?")) for s in skipped)
        why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        super().__init__(f"no image could be read in {where}: {len(skipped)} skipped ({why or 'none listed'})")
        self.skipped = skipped


@dataclass
class RetrievalResult:
    """Top-k per query, and how they were obtained."""

    queries: list[str]
    hits: list[list[Hit]]
    mode: str  # index | index-new | index-updated | index-resumed | scan
    images: int
    skipped: list[dict[str, Any]]
    scan_seconds: float
    query_ms: float
    images_per_s: float | None
    config: str
    index_path: str | None
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    source: str = ""
    splits: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "queries": [
                {"query": q, "hits": [h.__dict__ for h in hs]} for q, hs in zip(self.queries, self.hits, strict=True)
            ],
            "mode": self.mode,
            "images": self.images,
            "skipped": len(self.skipped),
            "scan_seconds": round(self.scan_seconds, 3),
            "startup_s": round(self.startup_s, 3),
            "query_ms": round(self.query_ms, 2),
            "images_per_s": round(self.images_per_s, 2) if self.images_per_s else None,
            "config": self.config,
            "index": self.index_path,
            "source": self.source,
            "splits": self.splits,
            "index_changes": self.changes,
            "notes": self.notes,
            "outputs": self.outputs,
        }


def embedding_recipe(config: EngineConfig) -> str:
    """The inference path embeddings come from, e.g. ``cpu:onnx-int8`` or ``cpu:eager+gpu:fp16``."""
    parts = [f"cpu:{config.cpu_backend}"] if config.cpu_models else []
    if config.gpu_models:
        parts.append(f"gpu:{config.gpu_precision}")
    return "+".join(parts)


@dataclass
class _Sync:
    """What bringing the index up to date did."""

    mode: str
    scan: ScanResult | None = None
    counts: dict[str, int] = field(default_factory=dict)


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
    progress: bool = False,
    shard_images: int = 1024,
    say: Callable[[str], None] | None = None,
) -> RetrievalResult:
    """Answer text queries over an image database.

    With the index (default), the first call scans every image with the engine and commits embedding
    shards as it goes (an interrupted scan resumes from them); later calls embed only images that are new or
    changed since, drop removed ones, and answer from the index in milliseconds. ``rescan`` or
    ``use_index=False`` runs the paper's full scan instead (no index); ``rebuild_index`` starts the index
    over. Raises :class:`NoReadableImages` when no image could be read.

    Example:
        >>> res = retrieve(["a photo of Felis catus"], dataset="data/", model="synthetic:tiny")
        >>> res.hits[0][0].locator, res.hits[0][0].score
    """
    from autotune.data import open_source
    from autotune.engine import embed_queries
    from autotune.models.facts import model_facts

    log = say or (lambda _m: None)
    texts = [q.strip() for q in queries]
    if not texts or any(not q for q in texts):
        raise ConfigError("empty query: give at least one non-empty text")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    source = open_source(dataset, image_column, split)
    records = source.records()
    splits = source.split_counts() if isinstance(source, HFDatasetSource) else {}
    if len(splits) > 1 or (splits and split):
        log("scanning " + " + ".join(f"{k} ({v:,} images)" for k, v in splits.items()))
    cfg = (config or safe_default_config()).validate()
    q = embed_queries(model, texts)
    notes: list[str] = []

    def finish(res: RetrievalResult) -> RetrievalResult:
        res.source, res.splits = source.describe(), splits
        return res

    if rescan or not use_index:
        scan = run_scan(source, model, cfg, queries=q, top_k=top_k, records=records, progress=progress_for(progress))
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
            cfg.describe(), None, notes,
        )  # fmt: skip
        res.startup_s = scan.startup_s
        return finish(res)

    facts = model_facts(model)  # weights hash and width from the cached sidecar: no second model load
    recipe = embedding_recipe(cfg)
    key = IndexKey(
        model, facts.weights_hash, recipe, preprocess_spec_for(model).digest(), facts.embed_dim, index_dtype
    )
    index = EmbeddingIndex(index_dir or default_index_dir(str(source.path), model, recipe, split))
    index.claim()
    sync = _sync_index(index, key, source, cfg, rebuild_index, progress, shard_images, notes, log)
    t0 = time.perf_counter()
    index.load()
    load_s = time.perf_counter() - t0
    assert index.catalog is not None
    if len(index) == 0:
        raise NoReadableImages(source.describe(), skipped_rows(index.catalog))
    t0 = time.perf_counter()
    scores, ids = index.search(q, top_k)
    query_ms = 1000 * (time.perf_counter() - t0) / len(texts)
    row = {int(i): n for n, i in enumerate(index.catalog["id"])}
    cat = index.catalog
    hits = []
    for srow, irow in zip(scores, ids, strict=True):
        found = []
        for rank, (s, i) in enumerate(zip(srow, irow, strict=True), start=1):
            n = row[int(i)]
            found.append(_hit(source, rank, int(i), float(s), Record(int(i), cat["locator"][n], cat["label"][n])))
        hits.append(found)
    built = sync.scan
    result = RetrievalResult(
        texts, hits, sync.mode, built.images if built else 0, skipped_rows(cat), built.scan_seconds if built else 0.0,
        query_ms, built.images_per_s if built else None, cfg.describe(), str(index.path), notes,
    )  # fmt: skip
    result.changes = sync.counts
    result.startup_s = built.startup_s if built else 0.0
    result.outputs["index_load_seconds"] = f"{load_s:.3f}"
    return finish(result)


def _sync_index(
    index: EmbeddingIndex,
    key: IndexKey,
    source: ImageSource,
    cfg: EngineConfig,
    rebuild: bool,
    progress: bool,
    shard_images: int,
    notes: list[str],
    log: Callable[[str], None],
) -> _Sync:
    """Bring the index up to date with the database: nothing, a build, an update or a resumed one.

    A complete index of the same key and database is served without a lock; any write takes the writer
    lock, so a second writer is refused with one line.
    """
    fingerprint = source.fingerprint()

    def current(meta: IndexMeta | None) -> bool:
        return bool(meta and meta.key == key and meta.complete and not meta.pending)

    meta = index.read_meta()
    if not rebuild and current(meta) and meta and meta.dataset_fingerprint == fingerprint:
        return _Sync("index")
    with index.writer():
        meta = index.read_meta()
        if rebuild or meta is None or meta.key != key:
            if meta is not None and meta.key != key:
                notes.append(f"index rebuilt: {meta.key.describe_difference(key)} since it was built")
            elif rebuild:
                notes.append("index rebuilt on request (--rebuild-index)")
            index.clear()
            meta = IndexMeta(key=key, dataset=str(source.path))
            index.write_meta(meta)
            for note in notes:
                log(note)
        elif current(meta) and meta.dataset_fingerprint == fingerprint:
            return _Sync("index")  # another process finished it while we waited
        was_complete = meta.complete
        plan = plan_update(index, meta, source.records(), source.identities(), fingerprint)
        if plan.resumed:
            notes.append(f"resuming an interrupted index update: {plan.resumed:,} images already embedded")
            log(notes[-1])
        scan = None
        skipped: list[dict[str, Any]] = []
        if plan.todo:
            log(f"embedding {len(plan.todo):,} images into {index.path}")
            scan = run_scan(
                source, key.model, cfg, records=plan.todo, sink_factory=index.sink(key.dtype, shard_images),
                progress=progress_for(progress),
            )  # fmt: skip
            skipped = scan.skipped
        commit_update(index, meta, plan, skipped)
        mode = "index-resumed" if plan.resumed else ("index-updated" if was_complete else "index-new")
        if was_complete:
            notes.append(f"index updated: {plan.describe()}")
            log(notes[-1])
        return _Sync(mode, scan, plan.counts)


def _hit(source: ImageSource, rank: int, rid: int, score: float, record: Record) -> Hit:
    """A Hit for one record."""
    return Hit(rank, rid, score, record.label, _record_path(source, record), record.locator)


def _record_path(source: Any, record: Any) -> str:
    """A displayable path for a record (a file path for folders, dataset#index otherwise)."""
    if getattr(source, "kind", "") == "folder":
        return str(Path(source.path) / record.locator)
    return f"{source.path}#{record.locator}"


def write_skipped(out: Path, skipped: Sequence[dict[str, Any]]) -> Path:
    """``skipped.csv``: one row per image that could not be read, with the reason."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "skipped.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "locator", "reason", "detail"])
        for s in skipped:
            w.writerow([s["id"], s["locator"], s["reason"], s.get("detail", "")])
    return out / "skipped.csv"


def write_outputs(
    result: RetrievalResult,
    source_dataset: str,
    out: Path,
    image_column: str | None = None,
    split: str | None = None,
) -> dict[str, str]:
    """Results folder: results.json / results.csv, skipped.csv, and a 3x3 contact sheet per query."""
    from autotune.data import open_source

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    atomic_write_json(out / "results.json", result.to_dict())
    files["json"] = str(out / "results.json")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "rank", "id", "score", "label", "path"])
        for qtext, hits in zip(result.queries, result.hits, strict=True):
            for h in hits:
                w.writerow([qtext, h.rank, h.id, f"{h.score:.6f}", h.label or "", h.path])
    files["csv"] = str(out / "results.csv")
    files["skipped"] = str(write_skipped(out, result.skipped))
    source = open_source(source_dataset, image_column, split)
    for qi, (qtext, hits) in enumerate(zip(result.queries, result.hits, strict=True)):
        name = "contact_sheet.png" if len(result.queries) == 1 else f"contact_sheet_{qi + 1}.png"
        contact_sheet(source, [(Record(h.id, h.locator, h.label), h) for h in hits[:9]], qtext, out / name)
        files[f"contact_sheet_{qi + 1}"] = str(out / name)
    result.outputs.update(files)
    return files


def contact_sheet(source: Any, items: list[tuple[Any, Hit]], title: str, path: Path, tile: int = 224) -> Path:
    """A 3x3 grid of the top images, each with its label and score underneath (the paper's figure)."""
    from PIL import Image, ImageDraw, ImageFont

    from autotune.preprocess import decode_image

    cols, rows, caption, head = 3, 3, 40, 36
    sheet = Image.new("RGB", (cols * tile, head + rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    big = ImageFont.load_default(size=18)
    draw.text((8, 8), f"query: {title}", fill="black", font=big)
    for n, (rec, hit) in enumerate(items[: cols * rows]):
        x, y = (n % cols) * tile, head + (n // cols) * (tile + caption)
        try:
            im = decode_image(source.read_bytes(rec))
            im.thumbnail((tile - 8, tile - 8))
        except Exception:
            im = Image.new("RGB", (tile - 8, tile - 8), "#dddddd")
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        draw.text((x + 6, y + tile + 2), f"#{hit.rank} {hit.label or rec.locator}"[:30], fill="black", font=font)
        draw.text((x + 6, y + tile + 20), f"score {hit.score:.4f}  id {hit.id}", fill="#444444", font=font)
    sheet.save(path)
    return path
