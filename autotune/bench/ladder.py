"""The paper's speed-up ladder, measured side by side in one run on the same images."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.bench.common import torch_threads
from autotune.engine import EngineConfig, logical_cores, run_scan
from autotune.engine.topk import select_topk

DEFAULT_QUERY = "a photo of Felis catus"


@dataclass
class Stage:
    """One rung of the ladder: its time, throughput and top-9."""

    name: str
    seconds: float
    images: int
    ids: list[int]
    scores: list[float]
    detail: str = ""
    steady_images_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Whole-run throughput, start-up included (as the paper timed it)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Best k ids/scores (score descending, id ascending)."""
    s, i = select_topk(scores[None, :], ids[None, :], k)
    return i[0].tolist(), s[0].tolist()


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
    profile: Any = None,
    plot: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Time the paper's stages on the same ``n`` images and return per-stage figures.

    Stages: (1) the model-card baseline (one image at a time, ``CLIPProcessor`` on text and image, the full
    ``CLIPModel``, ``logits_per_image``, a correct sort); (2) batched; (3) producers + one model;
    (4) several models, dynamic scheduling; (5) the same, static scheduling; (6) this machine's tuned
    profile, when one is given. Every stage's top-k is checked against a brute-force top-k computed with
    the same preprocessing and backend; overlap with the baseline's top-k is reported as information.
    """
    import torch
    from PIL import Image

    from autotune.data import make_dataset, open_source
    from autotune.models.loading import encode_texts, image_tower, load_clip
    from autotune.preprocess import PreprocessSpec, fast_preprocess, normalize

    say = log or (lambda _m: None)
    cores = logical_cores()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if dataset is None:
        tmp = tempfile.TemporaryDirectory(prefix="autotune-ladder-")
        dataset = Path(tmp.name) / "data"
        make_dataset(dataset, n=n, seed=0, progress=False)
    try:
        source = open_source(dataset, split=split)
        records = source.records()[:n]
        blobs = [source.read_bytes(r) for r in records]
        ids = np.array([r.id for r in records], dtype=np.int64)
        loaded = load_clip(model)
        proc, clip = loaded.processor, loaded.model
        text_emb = encode_texts(loaded, [query]).numpy()
        scale = float(clip.logit_scale.exp())
        tower = image_tower(loaded).eval()
        spec = PreprocessSpec.from_processor(proc)
        stages: list[Stage] = []
        import io

        def pil(b: bytes) -> Image.Image:
            return Image.open(io.BytesIO(b))

        # (1) Baseline: the model card's loop, one image at a time, all cores for torch.
        say("stage 1/6: baseline (model-card loop, one image at a time)")
        with torch_threads(cores), torch.inference_mode():
            t0 = time.perf_counter()
            scores = []
            for b in blobs:
                inputs = proc(text=[query], images=pil(b), return_tensors="pt", padding=True)
                scores.append(float(clip(**inputs).logits_per_image[0, 0]))
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))[:top_k]
            stages.append(
                Stage(
                    "baseline",
                    time.perf_counter() - t0,
                    len(blobs),
                    [int(ids[i]) for i in order],
                    [scores[i] / scale for i in order],
                    "model-card loop, batch 1",
                )
            )

        # (2) Batched model-card code.
        say(f"stage 2/6: batched (batch {batch})")
        with torch_threads(cores), torch.inference_mode():
            t0 = time.perf_counter()
            out = []
            for i in range(0, len(blobs), batch):
                inputs = proc(
                    text=[query], images=[pil(b) for b in blobs[i : i + batch]], return_tensors="pt", padding=True
                )
                out.append(clip(**inputs).logits_per_image[:, 0].numpy())
            bs = np.concatenate(out) / scale
            top_ids, top_s = _top(bs, ids, top_k)
            stages.append(
                Stage(
                    "batched", time.perf_counter() - t0, len(blobs), top_ids, top_s, f"model-card code, batch {batch}"
                )
            )

        # Brute-force references: reference preprocessing (stages 1-2) and fast preprocessing (engine).
        say("references: brute-force top-k for both preprocessing paths")
        with torch_threads(cores), torch.inference_mode():
            ref_px = np.concatenate(
                [
                    proc(images=[pil(b) for b in blobs[i : i + batch]], return_tensors="np")["pixel_values"]
                    for i in range(0, len(blobs), batch)
                ]
            )
            ref_emb = np.concatenate(
                [tower(torch.from_numpy(ref_px[i : i + batch])).numpy() for i in range(0, len(blobs), batch)]
            )
            fast_u8 = np.stack([fast_preprocess(b, spec) for b in blobs])
            fast_emb = np.concatenate(
                [
                    tower(normalize(torch.from_numpy(fast_u8[i : i + batch]), spec)).numpy()
                    for i in range(0, len(blobs), batch)
                ]
            )
        ref_top = _top((ref_emb @ text_emb.T)[:, 0], ids, top_k)
        fast_top = _top((fast_emb @ text_emb.T)[:, 0], ids, top_k)

        # Bare forward: the model alone on in-memory batches, the ceiling for the engine's throughput.
        threads = cores
        with torch_threads(threads), torch.inference_mode():
            x = normalize(torch.from_numpy(fast_u8[:batch]), spec)
            tower(x)
            t0 = time.perf_counter()
            reps = max(1, min(3, len(blobs) // batch))
            for _ in range(reps):
                tower(x)
            bare = reps * len(x) / (time.perf_counter() - t0)

        # Several replicas sharing the cores; the static stage differs only in its scheduling.
        replicas = max(2, cores // 2)
        multi = EngineConfig(
            producers=max(1, cores // 2),
            cpu_models=replicas,
            cpu_threads=max(1, cores // replicas),
            cpu_batch=batch,
            scheduling="dynamic",
        )
        engine_stages: list[tuple[str, EngineConfig, str]] = [
            (
                "parallel preprocessing",
                EngineConfig(producers=max(1, cores // 2), cpu_models=1, cpu_threads=cores, cpu_batch=batch),
                "producers + 1 model",
            ),
            ("multi-model dynamic", multi, "dynamic scheduling"),
            (
                "multi-model static",
                dataclasses.replace(multi, scheduling="static", probe_batches=1),
                "static scheduling",
            ),
        ]
        # Engine stages are timed from the moment every replica has loaded its model, like stages 1-2, whose
        # model is loaded before their clock starts; start-up (spawn + load) is reported apart.
        if profile is not None:
            engine_stages.append(("tuned profile", profile.config, "this machine's profile"))
        backend_refs: dict[str, tuple[list[int], list[float]]] = {}
        for idx, (name, cfg, what) in enumerate(engine_stages, start=3):
            say(f"stage {idx}/{len(engine_stages) + 2}: {name} ({cfg.describe()})")
            res = run_scan(source, model, cfg, queries=text_emb, top_k=top_k, records=records, progress=None)
            stages.append(
                Stage(
                    name,
                    res.scan_seconds,
                    res.images,
                    res.topk_ids[0].tolist(),
                    res.topk_scores[0].tolist(),
                    f"{what}: {cfg.describe()}",
                    steady_images_per_s=res.steady_images_per_s,
                    extra={"startup_s": res.startup_s, "bottleneck": res.bottleneck},
                )
            )
            if cfg.cpu_backend != "eager":
                # Brute force with the stage's own backend: a bf16/int8 stage is checked against itself, and
                # its difference from fp32 is what the accuracy guard measures.
                from autotune.models.backends import BackendSpec, build_backend

                with torch_threads(cfg.cpu_threads):
                    be = build_backend(BackendSpec(model_id=model, backend=cfg.cpu_backend, batch=cfg.cpu_batch))
                    emb = np.concatenate(
                        [be.embed(fast_u8[i : i + cfg.cpu_batch]) for i in range(0, len(fast_u8), cfg.cpu_batch)]
                    )
                backend_refs[name] = _top((emb @ text_emb.T)[:, 0], ids, top_k)
    finally:
        if tmp is not None:
            tmp.cleanup()

    base = stages[0]
    rows = []
    for st in stages:
        ref = ref_top if st.name in ("baseline", "batched") else backend_refs.get(st.name, fast_top)
        check = _check(st, *ref)
        rows.append(
            {
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
            }
        )
    engine_rows = [r for r in rows if r["steady_images_per_s"]]
    best = max(engine_rows, key=lambda r: r["images_per_s"]) if engine_rows else None
    result: dict[str, Any] = {
        "n": len(records),
        "model": model,
        "cores": cores,
        "stages": rows,
        "bare_forward_images_per_s": round(bare, 3),
        "bare_forward_threads": threads,
        "batch": batch,
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
    if plot is not None:
        plot_ladder(rows, plot, title=f"{model}, {len(records)} images, {cores} cores")
        result["plot"] = str(plot)
    return result


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
