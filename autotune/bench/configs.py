"""Full scans side by side: several engine configurations, several shapes of one database, interleaved."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
from typing import Any

from autotune.bench.tuner import FullScan
from autotune.defaults import default_dataset
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.progress import Log, quiet


def _top_contents(scan: FullScan) -> list[str]:
    """The last scan's top images as content digests: the same image in any shape has the same digest."""
    out = []
    for rec in scan.top:
        try:
            out.append(hashlib.blake2b(scan.source.read_bytes(rec), digest_size=8).hexdigest())
        except OSError:
            out.append("unreadable")
    return out


def bench_configs(
    configs: Sequence[EngineConfig],
    *,
    dataset: str | None = None,
    datasets: Sequence[str] = (),
    model: str = "synthetic:clip-vit-base-patch32",
    images: int = 2000,
    repeats: int = 3,
    split: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Full scans of several engine configurations, over one database or several shapes of it, side by side.

    Each run is the retrieval's full scan (the engine over ``images`` images with a query, start-up apart);
    each pass starts one run later than the last, so that no (configuration, database) pair always runs
    first or last on a machine whose speed drifts. One unmeasured run of each builds its artefacts and warms
    the page cache first. Figures: each pair's median images/s, its runs and its share of the best median.

    ``datasets`` (several shapes of one database: files, WebDataset shards, a ``save_to_disk`` dataset) adds
    per row ``over_first_dataset``, its images/s over the first dataset's with the same configuration, and
    ``top9_agree``: whether every dataset's last scan ranked the same images (compared by their bytes, since
    ids differ between shapes) in the same order as the first's; ``top9_overlap_min`` counts the worst
    dataset's images in common with the first's top 9. Each scans its first ``images`` records, so the check
    means something when ``images`` covers the whole database.

    Example:
        >>> cfgs = [EngineConfig(cpu_models=2, cpu_threads=1, cpu_backend=b) for b in ("bf16", "onnx-int8")]
        >>> bench_configs(cfgs, images=200, repeats=1)["rows"][0]["share_of_best"]  # doctest: +SKIP
    """
    say = log or quiet
    if not configs:
        raise ConfigError("give at least one configuration (--config JSON)")
    checked = [c.validate() for c in configs]
    names = list(datasets) or [dataset or str(default_dataset())]
    scans = [FullScan(name, model, images, split, say) for name in names]
    pairs = [(s, c) for s in range(len(scans)) for c in range(len(checked))]
    for s, c in pairs:  # exports, quantisation, calibration and compiled graphs: not what is compared
        say(f"warm-up (not measured): {checked[c].describe()} on {names[s]}")
        scans[s](checked[c])
    runs: list[list[float]] = [[] for _ in pairs]
    tops: list[list[str]] = [[] for _ in pairs]
    for r in range(repeats):
        for k in [(r + i) % len(pairs) for i in range(len(pairs))]:
            s, c = pairs[k]
            runs[k].append(scans[s](checked[c]))
            tops[k] = _top_contents(scans[s])
            where = f" on {names[s]}" if len(names) > 1 else ""
            say(f"pass {r + 1}/{repeats}: {runs[k][-1]:.1f} images/s  [{checked[c].describe()}]{where}")
    medians = [statistics.median(rs) for rs in runs]
    best = max(medians)
    rows = []
    for k, (s, c) in enumerate(pairs):
        row: dict[str, Any] = {"config": checked[c].describe(), "images_per_s": round(medians[k], 2),
                               "runs": [round(x, 2) for x in runs[k]],
                               "share_of_best": round(medians[k] / best, 3) if best > 0 else None}  # fmt: skip
        if len(names) > 1:
            first = medians[c]  # the same configuration on the first dataset
            row = {"dataset": names[s], **row, "over_first_dataset": round(medians[k] / first, 3) if first else None}
        rows.append({**row, "settings": checked[c].to_dict()})
    result: dict[str, Any] = {"images": images, "repeats": repeats, "model": model}
    if len(names) > 1:
        overlaps = [len(set(tops[k]) & set(tops[c])) for k, (_s, c) in enumerate(pairs)]
        result.update({
            "datasets": names,
            "top9_agree": all(tops[k] == tops[c] for k, (_s, c) in enumerate(pairs)),
            "top9_overlap_min": min(overlaps),
        })  # fmt: skip
    return {**result, "rows": rows, "best": rows[medians.index(best)]["config"]}
