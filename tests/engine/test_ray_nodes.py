"""The Ray engine on a real two-node Ray (two raylets on this machine, 1 CPU each, loopback only)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_cluster import two_nodes

from autotune.cli import main
from autotune.engine.config import EngineConfig
from autotune.engine.ray_cluster import fit_to_cpus
from autotune.retrieval import retrieve

QUERY = "a photo of Felis catus"
ray = pytest.importorskip("ray")


def test_a_node_given_part_of_its_host_runs_that_share_of_the_layout() -> None:
    """Two 1-CPU raylets on a 2-core host: each runs half of the host's 2-core profile, never all of it."""
    tuned = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=19)
    half = fit_to_cpus(tuned, 1, 2)
    assert (half.producers, half.cpu_models, half.cpu_threads, half.cpu_batch) == (1, 1, 1, 19)
    wide = fit_to_cpus(EngineConfig(producers=2, cpu_models=1, cpu_threads=4), 2, 8)
    assert (wide.producers, wide.cpu_models, wide.cpu_threads) == (1, 1, 2)
    assert fit_to_cpus(tuned, 2, 2) is tuned and fit_to_cpus(tuned, 4, 2) is tuned


TUNED = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=8)  # the second node's profile


def _save_node_profile(home: Path, model: str) -> None:
    """A profile in use for ``model`` in one node's own studies folder (as `autotune profile pull` leaves it)."""
    from autotune.machine import detect_machine
    from autotune.tuner.profile import Profile, model_arch, save_profile

    machine = detect_machine()
    save_profile(Profile(machine_id=machine.machine_id, machine=machine.summary(), config=TUNED, images_per_s=100.0,
                         spread=0.0, study="s", storage="sqlite:///x.db", trial=0, scan_size=64, model=model,
                         model_arch=model_arch(model), dataset="/data", dataset_fingerprint="f", device="cpu"),
                 folder=home / "profiles")  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: Path, tiny_model: str) -> Iterator[Any]:
    """Two raylets joined on loopback, each with a studies folder of its own: the second node's holds a profile
    for the tiny model, the first's and the driver's none."""
    homes = [tmp_path_factory.mktemp(f"node{i}") for i in range(2)]
    _save_node_profile(homes[1], tiny_model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_STUDIES", str(tmp_path_factory.mktemp("driver-studies")))
        c = two_nodes([{"AUTOTUNE_STUDIES": str(h)} for h in homes])
        try:
            yield c
        finally:
            c.stop()


@pytest.mark.timeout(600)
def test_two_nodes_give_the_local_engines_top9_and_both_embed(
    cluster: Any, db: Path, tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every listener of every Ray process of the cluster is on loopback.
    assert cluster.listeners_beyond_loopback() == []
    local = retrieve([QUERY], dataset=str(db), model=tiny_model, index_dir=tmp_path / "local")
    code = main(["retrieve", QUERY, "--dataset", str(db), "--model", tiny_model, "--index-dir",
                 str(tmp_path / "ray"), "--engine", "ray", "--address", cluster.address, "--out",
                 str(tmp_path / "out"), "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    figures = json.loads(out)
    assert [h["id"] for h in figures["queries"][0]["hits"]] == [h.id for h in local.hits[0]]
    assert figures["images"] == local.images == 54 and figures["skipped"] == 4
    nodes = figures["nodes"]
    assert len(nodes) == 2 and len({n["address"] for n in nodes}) == 2
    assert all(n["address"].startswith("127.0.0.1:") and n["machine_id"] for n in nodes)
    assert figures["min_images_per_node"] == min(n["images"] for n in nodes) > 0
    assert sum(n["images"] for n in nodes) == 54 and not any(n["lost"] for n in nodes)
    # Each node sized from its own machine's profile, fitted to the one CPU Ray gives it: the second node's
    # 2-replica profile runs one replica; the first node, with none, runs the safe default for one CPU.
    assert sorted(n["config"] for n in nodes) == sorted([
        EngineConfig(producers=1, cpu_models=1, cpu_threads=1).describe(),
        EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8).describe()])  # fmt: skip
    assert cluster.listeners_beyond_loopback() == []


@pytest.mark.slow  # a cluster of its own (one node is killed) and a 120-image scan: about a minute
@pytest.mark.timeout(600)
def test_a_node_lost_mid_scan_leaves_the_scan_to_the_other_with_every_image_once(
    tmp_path_factory: pytest.TempPathFactory, _isolated_cache: Path
) -> None:
    from autotune.data import make_dataset, open_source
    from autotune.engine.runner import embed_queries, run_scan
    from autotune.retrieval import scan_engine

    folder = tmp_path_factory.mktemp("lost") / "db"
    make_dataset(folder, n=120, seed=3)
    source, model = open_source(str(folder)), "fake:32"
    q = embed_queries(model, [QUERY])
    cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=4)
    local = run_scan(source, model, cfg, queries=q)
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_STUDIES", str(tmp_path_factory.mktemp("no-profiles")))
        c = two_nodes()
        try:
            killed = threading.Event()

            def kill_second_node_once_its_actor_runs() -> None:
                """SIGKILL the second raylet and its workers as soon as its model actor exists: its share (60
                images at 0.1 s each) cannot be done yet."""
                import psutil

                while not killed.is_set():
                    for pid in c.node_pids(1):
                        with contextlib.suppress(psutil.Error):
                            if "EmbedActor" in " ".join(psutil.Process(pid).cmdline()):
                                c.kill_node(1)
                                killed.set()
                    time.sleep(0.2)

            killer = threading.Thread(target=kill_second_node_once_its_actor_runs, daemon=True)
            killer.start()
            # The retrieval's Ray engine: no node has a profile, so each runs the safe default for its one CPU,
            # slowed to 0.1 s an image so that the kill lands mid-scan.
            scan = scan_engine("ray", c.address, said.append)
            res = scan(source, model, cfg, queries=q, fake_delay_s=0.1)
            assert killed.is_set()
        finally:
            c.stop()
    stats = res.workers[0]["stats"]
    assert res.images == local.images == 120 and not res.skipped  # every image once: the engine checks it too
    assert [i for i, _s in res.hits(0)] == [i for i, _s in local.hits(0)]
    lost, kept = sorted(stats["nodes"], key=lambda n: not n["lost"])
    assert lost["lost"] and not kept["lost"] and stats["nodes_lost"] == [lost["address"]]
    assert kept["images"] > 0 and lost["images"] + kept["images"] == 120
    assert any(f"Ray node {lost['address']} was lost mid-scan" in line for line in said), said
