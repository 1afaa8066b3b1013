"""Decode placement side by side: JPEGs decoded by the CPU producers against decoding in the replica (nvJPEG on
a GPU), the same images through the same model, and the bare decoders' images/s."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data import open_source
from autotune.engine import EngineConfig, embed_queries, logical_cores, run_scan
from autotune.engine.config import gpu_count

DEFAULT_QUERY = "a photo of Felis catus"


def placement_config(cores: int, gpus: int) -> EngineConfig:
    """The scan both placements run: GPU replicas fed by every core but one, or one CPU replica here.

    Example:
        >>> placement_config(16, 1).describe()
        '15 producers, 1 gpu/device (batch 128, fp16), dynamic'
    """
    if gpus:
        return EngineConfig(producers=max(1, cores - 1), cpu_models=0, gpu_models=1, gpu_batch=128, queue_depth=3)
    return EngineConfig(producers=1, cpu_models=1, cpu_threads=max(1, cores - 1), cpu_batch=16)


def _bare_decoders(blobs: list[bytes], device: str, batch: int = 128) -> dict[str, Any]:
    """Images/s of the CPU fast path on one core, and of the replica's batch decoder on ``device``."""
    from autotune.bench.common import torch_threads
    from autotune.preprocess import PreprocessSpec, preprocess_batch_fast
    from autotune.preprocess.decoders import decoder_for

    spec = PreprocessSpec()
    with torch_threads(1):
        t0 = time.perf_counter()
        preprocess_batch_fast(blobs, spec)
        cpu_core = len(blobs) / (time.perf_counter() - t0)
    decoder = decoder_for(device)
    decoder.warm(spec)
    t0 = time.perf_counter()
    for i in range(0, len(blobs), batch):
        pixels, _bad = decoder.decode(blobs[i : i + batch], spec)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    replica = len(blobs) / (time.perf_counter() - t0)
    return {"cpu_decode_images_per_s_per_core": round(cpu_core, 1),
            "replica_decoder_images_per_s": round(replica, 1), "replica_decoder": decoder.name}  # fmt: skip


def bench_decode(dataset: Path, model: str, n: int = 512, query: str = DEFAULT_QUERY) -> dict[str, Any]:
    """Scan the first ``n`` images with decoding on the producers, then in the replicas; the same top-k?

    On a GPU machine the replicas are GPU replicas and decode with nvJPEG; without one, a CPU replica decodes
    its own batches with the CPU decoder (the same code path, for the dry run and tests).

    Example:
        >>> bench_decode(Path("corpus"), "synthetic:tiny", n=32)["same_topk"]  # doctest: +SKIP
        True
    """
    source = open_source(dataset)
    records = source.records()[:n]
    cores, gpus = logical_cores(), gpu_count()
    base = placement_config(cores, gpus)
    queries = embed_queries(model, [query])
    rows = {}
    results = {}
    for placement in ("cpu", "gpu"):
        cfg = dataclasses.replace(base, decode=placement)
        res = run_scan(source, model, cfg, queries=queries, records=records)
        results[placement] = res
        consumers = [w for w in res.workers if w["role"] == "consumer"]
        producers = [w for w in res.workers if w["role"] == "producer"]
        rows[placement] = {
            **res.summary(),
            "replica_decode_s": round(sum(w["stats"]["seconds"].get("decode", 0.0) for w in consumers), 3),
            "producer_decode_s": round(sum(w["stats"]["seconds"].get("decode_resize", 0.0) for w in producers), 3),
            "decoder": next((w["stats"].get("decoder") for w in consumers if w["stats"].get("decoder")), "producers"),
        }
    a, b = results["cpu"], results["gpu"]
    diff = float(np.max(np.abs(np.sort(a.topk_scores[0]) - np.sort(b.topk_scores[0])))) if a.images else 0.0
    blobs = [source.read_bytes(r) for r in records[: min(len(records), 512)]]
    device = "cuda:0" if gpus else "cpu"
    return {
        "n": len(records), "model": model, "config": base.describe(), "gpus": gpus,
        "producers_decode": rows["cpu"], "replica_decode": rows["gpu"],
        "replica_over_producers": round(b.images_per_s / a.images_per_s, 3) if a.images_per_s else None,
        "steady_replica_over_producers": (
            round(b.steady_images_per_s / a.steady_images_per_s, 3) if a.steady_images_per_s else None
        ),
        "same_topk": a.topk_ids[0].tolist() == b.topk_ids[0].tolist() or diff < 2e-2,
        "max_topk_score_diff": round(diff, 6),
        **_bare_decoders(blobs, device),
    }  # fmt: skip
