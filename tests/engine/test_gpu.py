"""GPU replicas: mixed CPU+GPU scans give the same top-k as CPU-only scans (needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotune.data import open_source
from autotune.engine import EngineConfig, embed_queries, run_scan

QUERIES = ["a photo of Felis catus"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_and_mixed_scans_match_cpu(small_dataset: Path, tiny_model: str, precision: str) -> None:
    source = open_source(small_dataset)
    q = embed_queries(tiny_model, QUERIES)
    cpu = run_scan(source, tiny_model, EngineConfig(cpu_batch=8), queries=q)
    gpu = run_scan(source, tiny_model, EngineConfig(cpu_models=0, gpu_models=1, gpu_batch=16,
                                                    gpu_precision=precision), queries=q)
    mixed = run_scan(source, tiny_model, EngineConfig(cpu_models=1, cpu_batch=4, gpu_models=2, gpu_batch=16,
                                                      gpu_precision=precision, scheduling="static"), queries=q)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for res in (gpu, mixed):
        assert res.images == len(source)
        np.testing.assert_allclose(np.sort(res.topk_scores[0]), np.sort(cpu.topk_scores[0]), atol=tol)
    if precision == "fp32":
        assert gpu.topk_ids.tolist() == cpu.topk_ids.tolist()


def test_gpu_config_without_gpu_is_refused_before_start(small_dataset: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from autotune.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run_scan(open_source(small_dataset), "fake:8", EngineConfig(cpu_models=0, gpu_models=1))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["compile", "channels-last", "cuda-graphs"])
def test_gpu_backends_match_eager(tiny_model: str, backend: str) -> None:
    from autotune.models.backends import BackendSpec, build_backend

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 224, 224, 3), dtype=np.uint8)
    eager = build_backend(BackendSpec(model_id=tiny_model, device="cuda:0", precision="fp32", batch=8))
    other = build_backend(BackendSpec(model_id=tiny_model, device="cuda:0", precision="fp32", backend=backend,
                                      batch=8))
    ref = eager.embed(pixels)
    # 12 images on a batch-8 graph/compile: one full chunk, one padded.
    got = other.embed(pixels)
    assert got.shape == ref.shape
    assert float((got * ref).sum(axis=1).min()) > 0.999


@pytest.mark.gpu
def test_pinned_staging_is_reused_on_cuda(tiny_model: str) -> None:
    from autotune.models.backends._torch import HostStager

    stager = HostStager("cuda:0")
    a = stager.to_device(np.full((8, 4, 4, 3), 7, np.uint8))
    assert a.is_cuda and stager.buffer is not None and stager.buffer.is_pinned()
    b = stager.to_device(np.full((4, 4, 4, 3), 9, np.uint8))
    assert int(b.sum()) == 9 * 4 * 4 * 4 * 3 and stager.allocations == 1


@pytest.mark.gpu
def test_gpu_decode_scan_matches_producer_decode(small_dataset: Path, tiny_model: str) -> None:
    from autotune.models.guard import build_reference, check_config

    source = open_source(small_dataset)
    q = embed_queries(tiny_model, QUERIES)
    base = EngineConfig(cpu_models=0, gpu_models=1, gpu_batch=16, gpu_precision="fp32")
    cpu_decode = run_scan(source, tiny_model, base, queries=q)
    gpu_decode = run_scan(source, tiny_model, EngineConfig(**{**base.to_dict(), "decode": "gpu"}), queries=q)
    assert gpu_decode.images == cpu_decode.images == len(source)
    np.testing.assert_allclose(np.sort(gpu_decode.topk_scores[0]), np.sort(cpu_decode.topk_scores[0]), atol=2e-2)
    consumer = next(w for w in gpu_decode.workers if w["role"] == "consumer")
    assert consumer["stats"].get("decoder") == "torchvision"
    ref = build_reference(source, tiny_model, sample=32)
    results = check_config(ref, tiny_model, EngineConfig(**{**base.to_dict(), "decode": "gpu"}), source=source)
    assert [r.backend for r in results] == ["gpu-decode"]
    assert results[0].passed, results[0].reason
