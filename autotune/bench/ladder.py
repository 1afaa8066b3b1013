"""The paper's speed-up ladder, measured side by side in one run on the same images."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autotune.bench.ladder_stages import (
    Inputs,
    Stage,
    bare_forward,
    baseline,
    batched,
    engine_against_bare,
    engine_stages,
    load_inputs,
    references,
)
from autotune.data import make_dataset
from autotune.machine import detect_machine
from autotune.progress import Log, ProgressFactory, quiet
from autotune.tuner.profile import Profile, model_arch
from autotune.tuner.roofline import load_roofline

DEFAULT_QUERY = "a photo of Felis catus"


def _check(stage: Stage, ref_ids: list[int], ref_scores: list[float]) -> dict[str, Any]:
    """Compare a stage's top-k with its brute-force reference (same preprocessing and backend)."""
    same = stage.ids == ref_ids
    diff = max((abs(a - b) for a, b in zip(stage.scores, ref_scores, strict=False)), default=0.0)
    return {"exact": bool(same and diff <= 1e-4), "max_score_diff_vs_reference": diff}


def run_ladder(
    n: int = 96,
    dataset: Path | None = None,
    model: str = "synthetic:clip-vit-base-patch32",
    query: str = DEFAULT_QUERY,
    batch: int = 32,
    top_k: int = 9,
    profile: Profile | None = None,
    plot: Path | None = None,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
    split: str | None = None,
    paired_rounds: int = 3,
) -> dict[str, Any]:
    """Time the paper's stages on the same ``n`` images and return per-stage figures.

    Stages: (1) the model-card baseline (one image at a time, ``CLIPProcessor`` on text and image, the full
    ``CLIPModel``, ``logits_per_image``, a correct sort); (2) batched; (3) producers + one model;
    (4) several models, dynamic scheduling; (5) the same, static scheduling; (6) this machine's tuned
    profile, when one is given. Every stage's top-k is checked against a brute-force top-k computed with
    the same preprocessing and backend; overlap with the baseline's top-k is reported as information.
    Without ``dataset`` a corpus of ``n`` images is generated (reported to ``progress``); ``log`` gets a
    line per stage. ``engine_steady_vs_bare_forward`` comes from ``paired_rounds`` alternating runs of stage 3
    and the bare forward (the median of their ratios; 0: stage 3's single run against the one bare forward).

    Example:
        >>> result = run_ladder(n=32, model="synthetic:tiny")  # doctest: +SKIP
        >>> [row["stage"] for row in result["stages"]][:2]  # doctest: +SKIP
        ['baseline', 'batched']
    """
    say = log or quiet
    with _corpus(dataset, n, progress) as folder:
        inputs = load_inputs(folder, n, model, query, batch, top_k, split)
        stages = [baseline(inputs, say), batched(inputs, say)]
        refs = references(inputs, say)
        bare = bare_forward(inputs, refs.fast_u8)
        engine, backend_refs = engine_stages(inputs, profile, refs.fast_u8, say)
        stages += engine
        say(f"engine against the bare forward: {paired_rounds} paired rounds")
        paired = engine_against_bare(inputs, refs.fast_u8, paired_rounds) if paired_rounds else None
    base = stages[0]
    rows = []
    for st in stages:
        ref = refs.reference if st.name in ("baseline", "batched") else backend_refs.get(st.name, refs.fast)
        rows.append(_row(st, base, _check(st, *ref)))
    result = _summary(rows, inputs, bare, plot)
    if paired is not None:
        result["engine_vs_bare_paired"] = paired
        result["engine_steady_vs_bare_forward"] = paired["engine_steady_vs_bare_forward"]
    return result


@contextmanager
def _corpus(dataset: Path | None, n: int, progress: ProgressFactory | None) -> Iterator[Path]:
    """``dataset`` itself, or a corpus of ``n`` images generated into a temporary folder for the run."""
    if dataset is not None:
        yield dataset
        return
    with tempfile.TemporaryDirectory(prefix="autotune-ladder-") as tmp:
        folder = Path(tmp) / "data"
        make_dataset(folder, n=n, seed=0, progress=progress)
        yield folder


def _row(st: Stage, base: Stage, check: dict[str, Any]) -> dict[str, Any]:
    """One stage's figures, with its speed-up over the baseline and its check against brute force."""
    return {
        "stage": st.name,
        "seconds": round(st.seconds, 3),
        "images_per_s": round(st.images_per_s, 3),
        "steady_images_per_s": round(st.steady_images_per_s, 3) if st.steady_images_per_s else None,
        "speedup": round(base.seconds / st.seconds, 3) if st.seconds > 0 else None,
        "exact_vs_bruteforce": check["exact"],
        "max_score_diff_vs_bruteforce": check["max_score_diff_vs_reference"],
        "overlap_with_baseline": len(set(st.ids) & set(base.ids)),
        "max_score_diff_vs_baseline": max(
            (abs(a - b) for a, b in zip(st.scores, base.scores, strict=False)), default=0.0
        ),
        "detail": st.detail,
        **{k: v for k, v in st.extra.items()},
        # Engine stages: the share of the machine's core-seconds that the producers' preprocessing took.
        "preprocess_core_share": st.extra.get("time_per_image", {}).get("preprocess_core_share"),
    }


def _summary(rows: list[dict[str, Any]], inputs: Inputs, bare: float, plot: Path | None) -> dict[str, Any]:
    """The ladder's figures: every row, the bare forward, the best engine stage, and the plot if asked for."""
    engine_rows = [r for r in rows if r["steady_images_per_s"]]
    best = max(engine_rows, key=lambda r: r["images_per_s"]) if engine_rows else None
    result: dict[str, Any] = {
        "n": len(inputs.records),
        "model": inputs.model,
        "cores": inputs.cores,
        "stages": rows,
        "bare_forward_images_per_s": round(bare, 3),
        "bare_forward_threads": inputs.cores,
        "batch": inputs.batch,
    }
    if best:
        result["best_stage"] = best["stage"]
        result["best_speedup"] = best["speedup"]
        result["best_vs_batched"] = round(best["images_per_s"] / rows[1]["images_per_s"], 3)
    # Stage 3 runs one replica with the bare forward's batch and threads: its steady state shows whether
    # preprocessing and transport hide behind the model.
    same = next((r for r in rows if r["stage"] == "parallel preprocessing"), None)
    if same and same["steady_images_per_s"]:
        result["engine_steady_vs_bare_forward"] = round(same["steady_images_per_s"] / bare, 3)
        # Where the rest goes: the model itself slower inside the engine (cores shared with the producers),
        # waits for batches, copies in, scoring; and what preprocessing costs the machine.
        per = same.get("time_per_image") or {}
        if per.get("forward_ms"):
            result["bare_forward_ms_per_image"] = round(1000 / bare, 3)
            result["engine_forward_vs_bare_forward"] = round(1000 / bare / per["forward_ms"], 3)
            result["engine_time_per_image"] = per
    _add_roofline_shares(result, rows, inputs.model)
    if plot is not None:
        plot_ladder(rows, plot, title=f"{inputs.model}, {len(inputs.records)} images, {inputs.cores} cores")
        result["plot"] = str(plot)
    return result


def _add_roofline_shares(result: dict[str, Any], rows: list[dict[str, Any]], model: str) -> None:
    """Each stage's images/s as a share of this machine's stored ceiling (`autotune bench roofline`), if any."""
    roof = load_roofline(detect_machine().machine_id, model_arch(model))
    if roof is None or not roof.ceiling_images_per_s:
        result["roofline"] = "not measured on this machine: run `autotune bench roofline`"
        return
    result["ceiling_images_per_s"] = round(roof.ceiling_images_per_s, 2)
    for row in rows:
        row["roofline_share"] = roof.share(row["images_per_s"])
    if "best_stage" in result:
        result["best_roofline_share"] = next(r["roofline_share"] for r in rows if r["stage"] == result["best_stage"])


def plot_ladder(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Bar chart of speed-up per stage, like the paper's Fig. 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in rows]
    speed = [r["speedup"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(names, speed, color=["#999999"] + ["#3b7dd8"] * (len(rows) - 1))
    for b, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{r['speedup']:.2f}x\n{r['images_per_s']:.1f} img/s",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("speed-up over baseline")
    ax.set_title(f"Speed-up ladder: {title}")
    ax.set_ylim(0, max(speed) * 1.25 if speed else 1)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
