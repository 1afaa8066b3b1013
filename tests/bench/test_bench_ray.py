"""`autotune bench ray` on a real one-node Ray: both engines' figures, the ratio, the same top-9."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_cluster import start_cluster

from autotune.engine import EngineConfig

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_bench_ray_reports_both_engines_and_their_ratio(small_dataset: Path, tiny_model: str) -> None:
    from autotune.bench.ray import bench_ray

    cluster = start_cluster()
    try:
        cfg = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=16)
        figures = bench_ray(n=40, dataset=small_dataset, model=tiny_model, config=cfg, repeats=1,
                            address=cluster.address)  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert figures["images"] == 40 and figures["ray_nodes"] == 1 and figures["same_top9"]
    assert figures["local_images_per_s"] > 0 and figures["ray_images_per_s"] > 0
    assert figures["ray_over_local"] == pytest.approx(figures["ray_images_per_s"] / figures["local_images_per_s"],
                                                      rel=0.01)  # fmt: skip
    assert figures["ray_startup_s"] > 0  # joined here, so its start-up was timed
    run = figures["runs"][0]
    assert figures["steady_ray_over_local"] == pytest.approx(
        run["ray_steady_images_per_s"] / run["local_steady_images_per_s"], rel=0.01)  # fmt: skip
    assert figures["preprocessing"] == "tasks"  # 1 producer + 1 replica on 2 CPUs: nothing shared
