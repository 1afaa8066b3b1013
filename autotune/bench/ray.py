"""The Ray engine against the local engine: the same images, model and configuration, runs interleaved."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data.sources import ImageSource, Record, open_source
from autotune.defaults import default_dataset
from autotune.engine.config import EngineConfig, logical_cores
from autotune.engine.ray_cluster import NodeSizer, connect, import_ray
from autotune.engine.ray_local import LoopbackCluster
from autotune.engine.ray_runner import run_scan_ray
from autotune.engine.runner import embed_queries, run_scan
from autotune.errors import ConfigError
from autotune.progress import Log, quiet

QUERY = "a photo of Felis catus"


def bench_ray(
    *,
    n: int | None = None,
    dataset: str | Path | None = None,
    model: str = "synthetic:clip-vit-base-patch32",
    config: EngineConfig | None = None,
    repeats: int = 3,
    address: str | None = None,
    split: str | None = None,
    log: Log | None = None,
    nodes: int | None = None,
) -> dict[str, Any]:
    """Throughput of the Ray engine over the local engine's on the same machine, median of ``repeats`` pairs.

    Both engines scan the first ``n`` images of ``dataset`` (default: all of the generated 2,000-image
    corpus) with the same ``config`` (default: the safe default), alternating local, Ray, local, Ray... so a
    drift of the machine's speed hits both alike. Each engine's images/s is its images over its whole run,
    replica start-up (spawn and model load) included: Ray Data's preprocessing runs ahead while its actors
    load, so timing it from loaded replicas, as the local engine's own figure is, would count that work for
    free. Ray's own start-up (``ray_startup_s``: started once here, or joined at ``address``) is apart; each
    run's replica start-up and both engines' rates from loaded replicas are listed per run, and their median
    ratio is ``steady_ray_over_local``: a fair figure where the actors preprocess their own batches
    (``preprocessing``: inside the actors), an optimistic one where a task stage ran ahead. Every
    pair's top-9 is checked to be the same images (``same_top9``). ``driver_us_per_image``: the Ray
    driver's own time per image (bookkeeping and top-k; the benchmark writes no index), part of what bounds
    one driver's intake.

    ``nodes``: a cluster of that many raylets is started on this machine first (loopback only, this machine's
    cores split between them), each node sized by its own machine id's profile fitted to its CPUs (not by
    ``config``, which only the local engine runs), and stopped by process id when done or interrupted;
    ``min_images_per_node`` is the fewest images a node embedded in any run (0: a node did nothing).

    Example:
        >>> figures = bench_ray(n=200, model="synthetic:tiny", repeats=1)  # doctest: +SKIP
        >>> figures["ray_over_local"]  # doctest: +SKIP
        0.93
    """
    from autotune.retrieval import node_sizer, safe_default_config  # the retrieval imports the engines: late

    say = log or quiet
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    cfg = (config or safe_default_config()).validate()
    source = open_source(str(dataset) if dataset else str(default_dataset()), split=split)
    records = source.records()[: n or None]
    if n is not None and n > len(records):
        say(f"note: the database holds {len(records)} images, fewer than --n {n}")
    q = embed_queries(model, [QUERY])
    if nodes is not None:
        if address is not None:
            raise ConfigError("--nodes starts a cluster of its own: leave out --address")
        with LoopbackCluster(nodes=nodes, cpus=max(1, logical_cores() // nodes)) as cluster:
            say(f"a {nodes}-node Ray cluster on this machine at {cluster.address}")
            sizer = node_sizer(model, cfg, say)
            return _interleaved(source, records, model, cfg, q, repeats, cluster.address, sizer, say)
    return _interleaved(source, records, model, cfg, q, repeats, address, None, say)


def _interleaved(
    source: ImageSource, records: list[Record], model: str, cfg: EngineConfig, q: np.ndarray, repeats: int,
    address: str | None, sizer: NodeSizer | None, say: Log,
) -> dict[str, Any]:  # fmt: skip
    """:func:`bench_ray`'s runs, alternating local and Ray, and their medians."""
    conn = connect(address)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(repeats):
            say(f"repeat {rep + 1}/{repeats}: local engine")
            loc = run_scan(source, model, cfg, queries=q, records=records)
            say(f"repeat {rep + 1}/{repeats}: Ray engine")
            ray = run_scan_ray(source, model, cfg, queries=q, records=records, sizer=sizer)
            runs.append({
                "repeat": rep + 1, "local_images_per_s": round(loc.images / loc.seconds, 2),
                "ray_images_per_s": round(ray.images / ray.seconds, 2),
                "local_steady_images_per_s": round(loc.images_per_s, 2), "local_startup_s": round(loc.startup_s, 3),
                "ray_steady_images_per_s": round(ray.workers[0]["stats"]["steady_images_per_s"], 2),
                "ray_layout": ray.workers[0]["stats"]["layout"],
                "preprocessing": ray.workers[0]["stats"]["preprocessing"],
                "ray_actor_startup_s": round(ray.startup_s, 3),
                "same_top9": [i for i, _s in loc.hits(0)] == [i for i, _s in ray.hits(0)],
                "ray_bottleneck": ray.bottleneck,
                "driver_us_per_image": round(1e6 * ray.workers[0]["stats"]["driver_s"] / max(ray.images, 1), 1),
                "ray_min_images_per_node": ray.workers[0]["stats"]["min_images_per_node"],
                "ray_nodes_detail": ray.workers[0]["stats"]["nodes"],
            })  # fmt: skip
        nodes = len([node for node in import_ray().nodes() if node.get("Alive")])
    finally:
        if conn.started_here:
            import_ray().shutdown()
    local = statistics.median(r["local_images_per_s"] for r in runs)
    ray_rate = statistics.median(r["ray_images_per_s"] for r in runs)
    steady = [r["ray_steady_images_per_s"] / r["local_steady_images_per_s"]
              for r in runs if r["local_steady_images_per_s"]]  # fmt: skip
    return {
        "images": len(records), "model": model, "config": cfg.describe(), "repeats": repeats,
        "ray_address": conn.address, "ray_nodes": nodes,
        "local_images_per_s": round(local, 2), "ray_images_per_s": round(ray_rate, 2),
        "ray_over_local": round(ray_rate / local, 3) if local else None,
        "steady_ray_over_local": round(statistics.median(steady), 3) if steady else None,
        "min_images_per_node": min(r["ray_min_images_per_node"] for r in runs),
        "ray_layout": runs[-1]["ray_layout"],
        "preprocessing": runs[-1]["preprocessing"],
        "ray_startup_s": round(conn.startup_s, 3),
        "driver_us_per_image": statistics.median(r["driver_us_per_image"] for r in runs),
        "same_top9": all(r["same_top9"] for r in runs), "runs": runs,
    }  # fmt: skip
