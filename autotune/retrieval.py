"""Full retrieval: scan with the tuned profile (building a resumable index), answer from the index."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.engine.config import EngineConfig, logical_cores
from autotune.errors import ConfigError


def safe_default_config() -> EngineConfig:
    """A configuration that works anywhere when no profile exists: one producer, one replica on the rest."""
    cores = logical_cores()
    producers = max(1, cores // 4)
    return EngineConfig(producers=producers, cpu_models=1, cpu_threads=max(1, cores - producers), cpu_batch=32)


@dataclass
class Hit:
    """One retrieved image."""

    rank: int
    id: int
    score: float
    label: str | None
    path: str


@dataclass
class RetrievalResult:
    """Top-k per query, and how they were obtained."""

    queries: list[str]
    hits: list[list[Hit]]
    mode: str  # index | index-resumed | index-new | scan
    images: int
    skipped: list[dict[str, Any]]
    scan_seconds: float
    query_ms: float
    images_per_s: float | None
    config: str
    index_path: str | None
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

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
            "query_ms": round(self.query_ms, 2),
            "images_per_s": round(self.images_per_s, 2) if self.images_per_s else None,
            "config": self.config,
            "index": self.index_path,
            "notes": self.notes,
            "outputs": self.outputs,
        }


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
    index_dtype: str = "float16",
    image_column: str | None = None,
    progress: bool = False,
    shard_images: int = 1024,
    say: Callable[[str], None] | None = None,
) -> RetrievalResult:
    """Answer text queries over an image database.

    With the index (default), the first call scans every image with the engine and commits embedding
    shards as it goes (an interrupted scan resumes from them), and later calls answer from the index in
    milliseconds. ``rescan`` or ``use_index=False`` runs the paper's full scan instead (no index).

    Example:
        >>> res = retrieve(["a photo of Felis catus"], dataset="data/", model="synthetic:tiny")
        >>> res.hits[0][0].id, res.hits[0][0].score
    """
    from autotune.data import open_source
    from autotune.engine import embed_queries, run_scan
    from autotune.index import EmbeddingIndex, IndexMeta, default_index_dir
    from autotune.models.loading import load_clip
    from autotune.preprocess import PREPROCESS_VERSION

    log = say or (lambda _m: None)
    texts = [q.strip() for q in queries]
    if not texts or any(not q for q in texts):
        raise ConfigError("empty query: give at least one non-empty text")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    source = open_source(dataset, image_column)
    records = source.records()
    by_id = {r.id: r for r in records}
    cfg = (config or safe_default_config()).validate()
    loaded = load_clip(model)
    q = embed_queries(model, texts)
    notes: list[str] = []

    def hits_from(scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            row = []
            for rank, (s, i) in enumerate(zip(srow, irow, strict=True), start=1):
                rec = by_id[int(i)]
                row.append(Hit(rank, int(i), float(s), rec.label, _record_path(source, rec)))
            out.append(row)
        return out

    if rescan or not use_index:
        res = run_scan(source, model, cfg, queries=q, top_k=top_k, records=records, progress=progress)
        return RetrievalResult(
            texts,
            hits_from(res.topk_scores, res.topk_ids),
            "scan",
            res.images,
            res.skipped,
            res.scan_seconds,
            0.0,
            res.images_per_s,
            cfg.describe(),
            None,
            notes,
        )

    index = EmbeddingIndex(index_dir or default_index_dir(str(source.path), model))
    meta = IndexMeta(
        dataset=str(source.path),
        dataset_fingerprint=source.fingerprint(),
        model=model,
        weights_hash=loaded.weights_hash,
        preprocess_version=PREPROCESS_VERSION,
        embed_dim=loaded.embed_dim,
        dtype=index_dtype,
        records=len(records),
    )
    del loaded
    state, done = index.prepare(meta)
    scan_s, rate, images, skipped = 0.0, None, 0, []
    if state == "rebuild":
        notes.append(f"index rebuilt: {getattr(index, 'rebuild_reason', 'it changed')} since it was built")
        log(notes[-1])
    if state != "complete":
        todo = [r for r in records if r.id not in done]
        if state == "resume":
            notes.append(f"resuming an interrupted index: {len(done)} images already embedded, {len(todo)} to go")
            log(notes[-1])
        if todo:
            res = run_scan(
                source, model, cfg, queries=None, records=todo, sink_factory=index.sink(shard_images), progress=progress
            )
            scan_s, rate, images, skipped = res.scan_seconds, res.images_per_s, res.images, res.skipped
        index.finalize(skipped)
    stored = index.read_meta()
    assert stored is not None
    t0 = time.perf_counter()
    index.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, ids = index.search(q, top_k)
    query_ms = 1000 * (time.perf_counter() - t0) / len(texts)
    mode = {"complete": "index", "resume": "index-resumed"}.get(state, "index-new")
    result = RetrievalResult(
        texts,
        hits_from(scores, ids),
        mode,
        images,
        stored.skipped,
        scan_s,
        query_ms,
        rate,
        cfg.describe(),
        str(index.path),
        notes,
    )
    result.outputs["index_load_seconds"] = f"{load_s:.3f}"
    return result


def _record_path(source: Any, record: Any) -> str:
    """A displayable path for a record (a file path for folders, dataset#index otherwise)."""
    if getattr(source, "kind", "") == "folder":
        return str(Path(source.path) / record.locator)
    return f"{source.path}#{record.locator}"


def write_outputs(
    result: RetrievalResult, source_dataset: str, out: Path, image_column: str | None = None
) -> dict[str, str]:
    """Results folder: results.json / results.csv, skipped.csv, and a 3x3 contact sheet per query."""
    from autotune.data import open_source

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2))
    files["json"] = str(out / "results.json")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "rank", "id", "score", "label", "path"])
        for qtext, hits in zip(result.queries, result.hits, strict=True):
            for h in hits:
                w.writerow([qtext, h.rank, h.id, f"{h.score:.6f}", h.label or "", h.path])
    files["csv"] = str(out / "results.csv")
    with open(out / "skipped.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "locator", "reason", "detail"])
        for s in result.skipped:
            w.writerow([s["id"], s["locator"], s["reason"], s.get("detail", "")])
    files["skipped"] = str(out / "skipped.csv")
    source = open_source(source_dataset, image_column)
    by_id = {r.id: r for r in source.records()}
    for qi, (qtext, hits) in enumerate(zip(result.queries, result.hits, strict=True)):
        name = "contact_sheet.png" if len(result.queries) == 1 else f"contact_sheet_{qi + 1}.png"
        contact_sheet(source, [(by_id[h.id], h) for h in hits[:9]], qtext, out / name)
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
