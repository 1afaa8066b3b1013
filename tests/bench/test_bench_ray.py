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


@pytest.mark.slow  # a two-node cluster of its own and two scans: about a minute on the 2-core machine
@pytest.mark.timeout(600)
def test_bench_ray_on_two_nodes_starts_and_stops_its_own_cluster(
    small_dataset: Path, tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import json

    import psutil

    from autotune.cli import main

    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))  # no profile: each node's safe default
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main(["bench", "ray", "--nodes", "2", "--n", "40", "--dataset", str(small_dataset), "--model", tiny_model,
                 "--repeats", "1", "--profile", "none", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    figures = json.loads(out)  # stdout is the JSON document alone: what `bench.runs record` keeps
    assert figures["ray_nodes"] == 2 and figures["images"] == 40 and figures["same_top9"]
    assert figures["min_images_per_node"] > 0 and figures["ray_over_local"] > 0
    assert figures["steady_ray_over_local"] is not None
    (run,) = figures["runs"]
    assert len(run["ray_nodes_detail"]) == 2 and sum(n["images"] for n in run["ray_nodes_detail"]) == 40
    # No Ray process is left (the local engine's fork server, a child of this process, stays by design).
    left = [" ".join(p.cmdline()[:3]) for p in psutil.Process().children(recursive=True) if p.pid not in before
            and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert not [c for c in left if "/ray/" in c or c.startswith("ray::")], left
