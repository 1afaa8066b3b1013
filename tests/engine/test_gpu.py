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
