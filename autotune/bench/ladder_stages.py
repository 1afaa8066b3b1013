"""The rungs of the speed-up ladder, each measured on the same in-memory images: model card, batched, engine."""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotune.bench.common import torch_threads
from autotune.data import open_source
from autotune.data.records import ImageSource, Record
from autotune.engine import EngineConfig, logical_cores, run_scan
from autotune.engine.config import gpu_count
from autotune.engine.telemetry import time_per_image
from autotune.engine.topk import select_topk
from autotune.models.backends import BackendSpec, build_backend
from autotune.models.calibration import calibration_for
from autotune.models.loading import ImageTower, LoadedClip, encode_texts, image_tower, load_clip
from autotune.preprocess import PreprocessSpec, fast_preprocess, normalize
from autotune.progress import Log
from autotune.tuner.profile import Profile

#: A brute-force or stage top-k: ids, then scores.
TopK = tuple[list[int], list[float]]


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


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> TopK:
    """Best k ids/scores (score descending, id ascending)."""
    s, i = select_topk(scores[None, :], ids[None, :], k)
    return i[0].tolist(), s[0].tolist()


@dataclass(frozen=True)
class Inputs:
    """What every stage works on: the same images, the loaded model, the query's embedding."""

    source: ImageSource
    records: list[Record]
    blobs: list[bytes]
    ids: np.ndarray
    loaded: LoadedClip
    #: The model's logit scale, which the model-card stages' logits carry.
    scale: float
    tower: ImageTower
    text_emb: np.ndarray
    spec: PreprocessSpec
    model: str
    query: str
    batch: int
    top_k: int
    cores: int


@dataclass(frozen=True)
class References:
    """Brute-force top-k for both preprocessing paths, and the fast path's uint8 pixels."""

    reference: TopK
    fast: TopK
    fast_u8: np.ndarray


def load_inputs(
    dataset: Path, n: int, model: str, query: str, batch: int, top_k: int, split: str | None
) -> Inputs:
    """Read the first ``n`` images into memory, load the model, embed the query."""
    source = open_source(dataset, split=split)
    records = source.records()[:n]
    loaded = load_clip(model)
    return Inputs(
        source=source,
        records=records,
        blobs=[source.read_bytes(r) for r in records],
        ids=np.array([r.id for r in records], dtype=np.int64),
        loaded=loaded,
        scale=float(loaded.model.logit_scale.exp()),
        tower=image_tower(loaded).eval(),
        text_emb=encode_texts(loaded, [query]).numpy(),
        spec=PreprocessSpec.from_processor(loaded.processor),
        model=model,
        query=query,
        batch=batch,
        top_k=top_k,
        cores=logical_cores(),
    )


def _pil(data: bytes) -> Image.Image:
    """Open encoded bytes as the model card does (decoding is left to the processor)."""
    return Image.open(io.BytesIO(data))


def baseline(inputs: Inputs, say: Log) -> Stage:
    """(1) The model card's loop, one image at a time, all cores for torch."""
    import torch

    say("stage 1/6: baseline (model-card loop, one image at a time)")
    proc, clip, ids = inputs.loaded.processor, inputs.loaded.model, inputs.ids
    with torch_threads(inputs.cores), torch.inference_mode():
        t0 = time.perf_counter()
        scores = []
        for b in inputs.blobs:
            inputs_pt = proc(text=[inputs.query], images=_pil(b), return_tensors="pt", padding=True)
            scores.append(float(clip(**inputs_pt).logits_per_image[0, 0]))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))[: inputs.top_k]
        seconds = time.perf_counter() - t0
    top_ids, top_s = [int(ids[i]) for i in order], [scores[i] / inputs.scale for i in order]
    return Stage("baseline", seconds, len(inputs.blobs), top_ids, top_s, "model-card loop, batch 1")


def batched(inputs: Inputs, say: Log) -> Stage:
    """(2) The model card's code on batches."""
    import torch

    batch, blobs = inputs.batch, inputs.blobs
    say(f"stage 2/6: batched (batch {batch})")
    proc, clip = inputs.loaded.processor, inputs.loaded.model
    with torch_threads(inputs.cores), torch.inference_mode():
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(blobs), batch):
            inputs_pt = proc(
                text=[inputs.query], images=[_pil(b) for b in blobs[i : i + batch]], return_tensors="pt", padding=True
            )
            out.append(clip(**inputs_pt).logits_per_image[:, 0].numpy())
        top_ids, top_s = _top(np.concatenate(out) / inputs.scale, inputs.ids, inputs.top_k)
        seconds = time.perf_counter() - t0
    return Stage("batched", seconds, len(blobs), top_ids, top_s, f"model-card code, batch {batch}")


def references(inputs: Inputs, say: Log) -> References:
    """Brute-force top-k with reference preprocessing (stages 1-2) and with fast preprocessing (engine)."""
    import torch

    say("references: brute-force top-k for both preprocessing paths")
    batch, blobs, spec = inputs.batch, inputs.blobs, inputs.spec
    proc, tower = inputs.loaded.processor, inputs.tower
    with torch_threads(inputs.cores), torch.inference_mode():
        ref_px = np.concatenate(
            [
                proc(images=[_pil(b) for b in blobs[i : i + batch]], return_tensors="np")["pixel_values"]
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
    reference = _top((ref_emb @ inputs.text_emb.T)[:, 0], inputs.ids, inputs.top_k)
    fast = _top((fast_emb @ inputs.text_emb.T)[:, 0], inputs.ids, inputs.top_k)
    return References(reference, fast, fast_u8)


def bare_forward(inputs: Inputs, fast_u8: np.ndarray) -> float:
    """Images/s of the model alone on in-memory batches: the ceiling for the engine's throughput."""
    import torch

    tower = inputs.tower
    with torch_threads(inputs.cores), torch.inference_mode():
        x = normalize(torch.from_numpy(fast_u8[: inputs.batch]), inputs.spec)
        tower(x)
        t0 = time.perf_counter()
        reps = max(1, min(3, len(inputs.blobs) // inputs.batch))
        for _ in range(reps):
            tower(x)
        seconds = time.perf_counter() - t0
    return reps * len(x) / seconds


def engine_against_bare(inputs: Inputs, fast_u8: np.ndarray, rounds: int = 3) -> dict[str, Any]:
    """The engine's steady state against the bare forward of the same backend and threads, in paired rounds.

    Stage 3's configuration (one replica on every core, the producers beside it) and the bare forward run in
    alternating order ``rounds`` times; the figure is the median of the per-round ratios. Measured once each,
    a machine whose speed drifts within minutes gave 0.95 in one run and 0.75 in the next.
    """
    cfg = _engine_configs(inputs, None)[0][1]
    bare: list[float] = []
    steady: list[float] = []
    for r in range(rounds):
        for what in ("bare", "engine") if r % 2 == 0 else ("engine", "bare"):
            if what == "bare":
                bare.append(bare_forward(inputs, fast_u8))
            else:
                res = run_scan(inputs.source, inputs.model, cfg, records=inputs.records, progress=None)
                steady.append(res.steady_images_per_s)
    ratios = [e / b for e, b in zip(steady, bare, strict=True) if b > 0]
    return {
        "rounds": rounds,
        "config": cfg.describe(),
        "bare_forward_images_per_s": [round(b, 3) for b in bare],
        "engine_steady_images_per_s": [round(e, 3) for e in steady],
        "engine_steady_vs_bare_forward": round(float(np.median(ratios)), 3) if ratios else None,
    }


def _engine_configs(inputs: Inputs, profile: Profile | None) -> list[tuple[str, EngineConfig, str]]:
    """Stages 3 and up: one replica, several (dynamic, then static scheduling), and the tuned profile."""
    cores, batch = inputs.cores, inputs.batch
    # Several replicas sharing the cores; the static stage differs only in its scheduling.
    replicas = max(2, cores // 2)
    multi = EngineConfig(
        producers=max(1, cores // 2),
        cpu_models=replicas,
        cpu_threads=max(1, cores // replicas),
        cpu_batch=batch,
        scheduling="dynamic",
    )
    stages: list[tuple[str, EngineConfig, str]] = [
        (
            "parallel preprocessing",
            EngineConfig(producers=max(1, cores // 2), cpu_models=1, cpu_threads=cores, cpu_batch=batch),
            "producers + 1 model",
        ),
        ("multi-model dynamic", multi, "dynamic scheduling"),
        ("multi-model static", dataclasses.replace(multi, scheduling="static", probe_batches=1), "static scheduling"),
    ]
    stages += gpu_stage_configs(cores, gpu_count(), batch)
    if profile is not None:
        stages.append(("tuned profile", profile.config, "this machine's profile"))
    return stages


def gpu_stage_configs(cores: int, gpus: int, batch: int) -> list[tuple[str, EngineConfig, str]]:
    """The GPU rungs, on a machine with GPUs: one fp16 replica per GPU fed by producers, the same with the GPU
    decoding the JPEGs, and CPU + GPU replicas split statically by probed speed (none without a GPU).

    Example:
        >>> [name for name, _cfg, _what in gpu_stage_configs(16, 1, 32)]
        ['gpu replicas', 'gpu decode', 'cpu+gpu static']
    """
    if not gpus:
        return []
    producers = max(1, cores - 1)
    gpu = EngineConfig(producers=producers, cpu_models=0, gpu_models=1, gpu_batch=max(batch, 128), queue_depth=3)
    mixed = dataclasses.replace(
        gpu, producers=max(1, cores - 3), cpu_models=1, cpu_threads=2, cpu_batch=batch, scheduling="static"
    )
    return [
        ("gpu replicas", gpu, f"producers + 1 fp16 replica on each of {gpus} GPU(s)"),
        ("gpu decode", dataclasses.replace(gpu, decode="gpu"), "the GPU replicas decode the JPEGs (nvJPEG)"),
        ("cpu+gpu static", mixed, "CPU and GPU replicas, static split by probed speed"),
    ]


def engine_stages(
    inputs: Inputs, profile: Profile | None, fast_u8: np.ndarray, say: Log
) -> tuple[list[Stage], dict[str, TopK]]:
    """Run the engine stages; return them and, for non-eager backends, their own brute-force top-k."""
    # Engine stages are timed from the moment every replica has loaded its model, like stages 1-2, whose
    # model is loaded before their clock starts; start-up (spawn + load) is reported apart.
    configs = _engine_configs(inputs, profile)
    stages: list[Stage] = []
    backend_refs: dict[str, TopK] = {}
    for idx, (name, cfg, what) in enumerate(configs, start=3):
        say(f"stage {idx}/{len(configs) + 2}: {name} ({cfg.describe()})")
        res = run_scan(
            inputs.source, inputs.model, cfg, queries=inputs.text_emb, top_k=inputs.top_k, records=inputs.records,
            progress=None,
        )  # fmt: skip
        stages.append(
            Stage(
                name,
                res.scan_seconds,
                res.images,
                res.topk_ids[0].tolist(),
                res.topk_scores[0].tolist(),
                f"{what}: {cfg.describe()}",
                steady_images_per_s=res.steady_images_per_s,
                extra={"startup_s": res.startup_s, "bottleneck": res.bottleneck,
                       "time_per_image": time_per_image(res.workers, res.images, res.scan_seconds, inputs.cores)},
            )
        )
        if cfg.cpu_models and cfg.cpu_backend != "eager":
            backend_refs[name] = _backend_reference(inputs, cfg, fast_u8)
    return stages, backend_refs


def _backend_reference(inputs: Inputs, cfg: EngineConfig, fast_u8: np.ndarray) -> TopK:
    """Brute force with a stage's own backend.

    A bf16/int8 stage is checked against itself; its difference from fp32 is what the accuracy guard measures.
    """
    with torch_threads(cfg.cpu_threads):
        cal = calibration_for(inputs.source, inputs.model, cfg.cpu_backend)  # what the stage's scan drew
        spec = BackendSpec(model_id=inputs.model, backend=cfg.cpu_backend, batch=cfg.cpu_batch, calibration=cal)
        be = build_backend(spec)
        emb = np.concatenate(
            [be.embed(fast_u8[i : i + cfg.cpu_batch]) for i in range(0, len(fast_u8), cfg.cpu_batch)]
        )
    return _top((emb @ inputs.text_emb.T)[:, 0], inputs.ids, inputs.top_k)
