"""`autotune study --engine ray` over a real two-node Ray (loopback only) and a real PostgreSQL: both nodes
measure trials, one validates, both end with the pick in use. On one host the two nodes' trials share the same
cores: this checks the mechanics, not the figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from pg_server import PgServer, postgres_server, why_unavailable
from ray_cluster import two_nodes

from autotune.tuner.study import StudyOptions

pytestmark = [pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())), pytest.mark.slow]
ray = pytest.importorskip("ray")

SPACE = """\
name: nodes
device: cpu
params:
  cpu_batch: {type: categorical, choices: [4, 8]}
fixed: {producers: 1, cpu_models: 1, cpu_threads: 1, gpu_models: 0}
defaults: {cpu_batch: 8}
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL server on loopback for this module, removed afterwards."""
    with postgres_server() as server:
        yield server


def _in_use(studies: Path) -> set[str]:
    """Ids of the profiles in use in a studies folder."""
    files = studies.glob("profiles/*/current.json")
    return {e["id"] for f in files for e in json.loads(f.read_text())["current"].values()}


@pytest.mark.timeout(900)
def test_a_study_over_two_nodes_ends_with_the_pick_on_both(pg: PgServer, tmp_path: Path, small_dataset: Path) -> None:
    from autotune.tuner.ray_workers import run_ray_study

    homes = [tmp_path / f"node{i}" for i in range(2)]  # each node keeps its own profiles, as machines do
    (tmp_path / "space.yaml").write_text(SPACE)
    options = StudyOptions(space=str(tmp_path / "space.yaml"), trials=6, rounds=2, model="fake:32",
                           dataset=str(small_dataset), validate_repeats=0, min_timed_images=0,
                           storage=pg.url)  # fmt: skip
    cluster = two_nodes([{"AUTOTUNE_STUDIES": str(h)} for h in homes])
    try:
        assert cluster.listeners_beyond_loopback() == []
        out = run_ray_study(options, address=cluster.address)
    finally:
        cluster.stop()
    assert len(out.nodes) == 2 and len({n.machine_id for n in out.nodes}) == 1
    validators = {w["validated_by"] for w in out.workers}
    assert len(validators) == 1 and validators <= {w["worker"] for w in out.workers}
    study = optuna.load_study(study_name=out.workers[0]["study"], storage=pg.url)
    assert {t.user_attrs.get("worker") for t in study.trials} == {w["worker"] for w in out.workers}  # both measured
    (pick,) = _in_use(homes[0])
    assert _in_use(homes[1]) == {pick}
    assert all(Path(w["profile"]).stem == pick for w in out.workers)
