"""The Ray engine on a real local Ray (2 CPUs, small object store, loopback only): same index as the local engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_cluster import start_cluster

from autotune.cli import main
from autotune.engine.config import EngineConfig
from autotune.engine.ray_cluster import NodePlan, layout_for
from autotune.engine.ray_stages import KILL_FLAG_ENV
from autotune.errors import ConfigError
from autotune.retrieval import RetrievalOptions, retrieve

QUERY = "a photo of Felis catus"


# ------------------------------------------------------------------ no Ray needed: layout and option checks
def _node(cfg: EngineConfig, gpus: int = 0) -> NodePlan:
    """A node plan with ``cfg`` (resources as the profile asks)."""
    return NodePlan("10.0.0.1", "m", cfg.producers + cfg.cpu_models * cfg.cpu_threads, gpus, cfg, None)


def test_layout_adds_nodes_up_with_the_smallest_actor_shape() -> None:
    big = EngineConfig(producers=4, cpu_models=3, cpu_threads=4, cpu_batch=64)
    small = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=32)
    gpu = EngineConfig(producers=8, cpu_models=0, gpu_models=2, gpu_batch=256)
    layout = layout_for([_node(big), _node(small), _node(gpu, gpus=4), _node(gpu, gpus=0)])
    assert (layout.preprocess_tasks, layout.cpu_actors, layout.cpu_threads, layout.cpu_batch) == (21, 4, 1, 32)
    # The GPU node without a GPU contributes producers but no GPU actor.
    assert (layout.gpu_actors, layout.gpu_batch, layout.gpus_per_actor) == (8, 256, 0.5)
    assert layout.unit_batch() == 32
    with pytest.raises(ConfigError, match="no Ray node can run"):
        layout_for([_node(gpu, gpus=0)])


def test_blocks_are_whole_batches_of_about_a_hundred_images_and_enough_per_actor() -> None:
    """Blocks of several batches spare the driver's per-block cost; a small scan still spreads over the actors."""
    two = layout_for([_node(EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=26))])
    assert two.block_rows(2000) == 104 and two.block_rows(200) == 26 and two.block_rows(5) == 26
    assert two.block_rows(600) == 52  # 600 // 8 = 75: two batches, so each actor still gets 4 or more blocks
    gpu = layout_for([_node(EngineConfig(cpu_models=0, gpu_models=1, gpu_batch=128), gpus=1)])
    assert gpu.block_rows(10**6) == 8 * 128 and gpu.block_rows(2000) == 3 * 128  # 2000 // 4 = 500: 3 batches


def test_a_profile_sharing_the_cores_leaves_cpus_for_the_preprocessing() -> None:
    """1 replica x 2 threads + 1 producer on 2 cores: Ray's reservations are scaled to fit the node's CPUs, or
    the actor would hold every CPU and no preprocessing task would ever be scheduled (a hung scan)."""
    shared = EngineConfig(producers=1, cpu_models=1, cpu_threads=2, cpu_batch=16)
    layout = layout_for([NodePlan("10.0.0.1", "m", 2, 0, shared, None)])
    asked = layout.preprocess_tasks * layout.cpu_share + layout.cpu_actors * layout.cpu_threads * layout.cpu_share
    assert not layout.fused and layout.cpu_share == pytest.approx(2 / 3) and asked == pytest.approx(2)
    roomy = layout_for([NodePlan("10.0.0.1", "m", 8, 0, shared, None)])
    assert roomy.cpu_share == 1.0  # room for everything: whole CPUs, as before


def test_one_thread_replicas_sharing_the_cores_preprocess_inside_the_actors() -> None:
    """1 producer + 2 replicas x 1 thread on 2 cores: each actor reads and preprocesses its own batches and
    reserves a whole CPU; with room for the producer, or with GPU actors, preprocessing stays a task stage."""
    shared = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16)
    fused = layout_for([NodePlan("10.0.0.1", "m", 2, 0, shared, None)])
    assert fused.fused and fused.cpu_share == 1.0 and "preprocess task" not in fused.describe()
    assert not layout_for([NodePlan("10.0.0.1", "m", 3, 0, shared, None)]).fused
    with_gpu = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, gpu_models=1)
    assert not layout_for([NodePlan("10.0.0.1", "m", 2, 1, with_gpu, None)]).fused


@pytest.mark.parametrize(
    ("engine", "address", "needle"),
    [("spark", None, "--engine must be one of local, ray"), ("local", "auto", "--address needs --engine ray")],
    ids=["unknown-engine", "address-without-ray"],
)
def test_engine_options_are_checked_first(engine: str, address: str | None, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RetrievalOptions(queries=(QUERY,), engine=engine, address=address).validate()


def test_without_ray_installed_the_engine_is_one_line_naming_the_extra(small_dataset: Path) -> None:
    # A real interpreter in which `import ray` fails, as on a machine without the extra.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from autotune.cli import main\n"
        f"sys.exit(main(['retrieve', 'x', '--engine', 'ray', '--dataset', {str(small_dataset)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "clip-autotune[ray]"' in lines[0], proc.stderr


# ------------------------------------------------------------------ a real local Ray, started once for the module
ray = pytest.importorskip("ray")  # after ray_cluster (imported above), which sets what Ray reads on import


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: Path) -> Iterator[dict[str, Any]]:
    """A Ray cluster on this machine, joined by its address as `--address HOST:PORT` would; no node profile."""
    from autotune.engine.ray_cluster import connect

    cluster = start_cluster()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_STUDIES", str(tmp_path_factory.mktemp("studies")))
        try:
            conn = connect(cluster.address)
            yield {"address": cluster.address, "connection": conn, "nodes": ray.nodes()}
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def local_answer(db: Path, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The local engine's index build and answer over the same database (safe default, as the Ray nodes get)."""
    return retrieve([QUERY], dataset=str(db), model=tiny_model, index_dir=tmp_path_factory.mktemp("idx") / "local")


def _same_answer(a: Any, b: Any) -> None:
    """Same top-k (ids and float16 index scores) and the same skipped images with the same reasons."""
    assert [(h.id, h.score) for h in a.hits[0]] == [(h.id, h.score) for h in b.hits[0]]
    assert [(s["id"], s["reason"]) for s in a.skipped] == [(s["id"], s["reason"]) for s in b.skipped]


# The module's Ray start and the local engine's build run in this test's setup: about 2 minutes on an idle
# 2-core machine, over 5 at a load of 13 (the suite's 300 s limit cut it there once).
@pytest.mark.timeout(600)
def test_ray_index_equals_local_and_survives_a_killed_actor(
    ray_session: dict[str, Any], db: Path, tiny_model: str, local_answer: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Every Ray process listens on this machine only.
    assert {n["NodeManagerAddress"] for n in ray_session["nodes"]} == {"127.0.0.1"}
    flag = tmp_path / "kill-one-actor"
    flag.touch()
    monkeypatch.setenv(KILL_FLAG_ENV, str(flag))
    said: list[str] = []
    res = retrieve([QUERY], dataset=str(db), model=tiny_model, index_dir=tmp_path / "ray", engine="ray",
                   address=ray_session["address"], log=said.append, shard_images=8)  # fmt: skip
    assert not flag.exists(), "no actor picked the kill flag up: the recovery path was not exercised"
    assert res.mode == local_answer.mode == "index-new"
    assert res.images == local_answer.images == 54 and len(res.skipped) == 4
    _same_answer(res, local_answer)
    # The node has no profile here: it runs the safe default, and the warning names it.
    assert any("127.0.0.1" in s and "has no profile" in s and "safe default" in s for s in said), said


def test_actors_that_preprocess_their_own_batches_give_the_local_engines_answer(
    ray_session: dict[str, Any], db: Path, tiny_model: str
) -> None:
    """The fused layout (1 producer + 2 one-thread replicas per 2-CPU node): same top-9 and skipped images as
    the local engine with the same configuration, every record accounted for once."""
    from autotune.data import open_source
    from autotune.engine.ray_runner import run_scan_ray
    from autotune.engine.runner import embed_queries, run_scan

    cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=8)
    source = open_source(str(db))
    q = embed_queries(tiny_model, [QUERY])
    local = run_scan(source, tiny_model, cfg, queries=q)
    ray_res = run_scan_ray(source, tiny_model, cfg, queries=q, address=ray_session["address"])
    assert "preprocessing inside" in ray_res.workers[0]["stats"]["layout"]
    assert [i for i, _s in ray_res.hits(0)] == [i for i, _s in local.hits(0)]
    assert ray_res.images == local.images == 54
    skipped = [sorted((s["id"], s["reason"]) for s in r.skipped) for r in (ray_res, local)]
    assert skipped[0] == skipped[1] and len(skipped[0]) == 4


@pytest.mark.slow  # two more Ray scans (about 2 minutes on the loaded 2-core machine)
@pytest.mark.timeout(600)
def test_ray_build_resumes_from_committed_shards_after_a_kill(
    ray_session: dict[str, Any], db: Path, tiny_model: str, local_answer: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    class StopAfter:
        """A progress bar that interrupts the scan once 24 records are in (as Ctrl-C would)."""

        def __init__(self, _desc: str, _total: int) -> None:
            """Nothing to draw."""

        def update(self, completed: int, info: str = "") -> None:
            """Interrupt once enough shards are committed."""
            if completed >= 24:
                raise KeyboardInterrupt

        def advance(self, k: int = 1, info: str = "") -> None:
            """Unused."""

        def close(self) -> None:
            """Unused."""

    index = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        retrieve([QUERY], dataset=str(db), model=tiny_model, index_dir=index, engine="ray", progress=StopAfter,
                 address=ray_session["address"], shard_images=8)  # fmt: skip
    committed = list(index.glob("shard-*.npz"))
    assert committed, "the interrupted build committed no shard"
    code = main(["retrieve", QUERY, "--dataset", str(db), "--model", tiny_model, "--index-dir", str(index),
                 "--engine", "ray", "--address", ray_session["address"], "--profile", "none",
                 "--out", str(tmp_path / "out"), "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    figures = json.loads(out)  # stdout holds the JSON alone: nothing from Ray
    assert figures["mode"] == "index-resumed"
    assert 0 < figures["images"] < 54  # only what the interrupted run had not committed
    assert [h["id"] for h in figures["queries"][0]["hits"]] == [h.id for h in local_answer.hits[0]]
    assert figures["skipped"] == 4
