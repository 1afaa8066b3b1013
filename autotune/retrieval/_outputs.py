"""What a retrieval leaves on disk: results.json / results.csv, skipped.csv and a contact sheet per query."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.data.sources import ImageSource, Record, open_source
from autotune.retrieval._result import Hit, RetrievalResult


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


def contact_sheet(
    source: ImageSource, items: list[tuple[Record, Hit]], title: str, path: Path, tile: int = 224
) -> Path:
    """A 3x3 grid of the top images, each with its label and score underneath (the paper's figure)."""
    from PIL import Image, ImageDraw, ImageFont

    from autotune.preprocess import decode_image  # imports torch: only when a sheet is drawn

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
