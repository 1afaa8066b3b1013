"""`autotune study --engine ray` on a real local Ray instance: one worker per node, the node reserved whole."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from autotune.errors import ConfigError
from autotune.machine import detect_machine
from autotune.tuner.ray_workers import run_ray_study
from autotune.tuner.search import is_measured
from autotune.tuner.study import StudyOptions

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
SPACE = """\
name: ray
device: cpu
params:
  cpu_batch: {type: categorical, choices: [4, 8]}
fixed: {producers: 1, cpu_models: 1, cpu_threads: 1, gpu_models: 0}
defaults: {cpu_batch: 8}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-node Ray instance with 2 CPUs, and the studies folder its workers save to.

    Ray's workers take the environment of the process that started Ray: the folder and this checkout's
    autotune are set before it starts.
    """
    studies = tmp_path_factory.mktemp("ray") / "studies"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_STUDIES", str(studies))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        # A new instance of our own ("local"), never a cluster someone else started on this machine; its
        # session files in a folder of its own (short: Ray's socket paths must fit in 107 characters).
        temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2,
                 _temp_dir=temp)  # fmt: skip
        try:
            yield studies
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def test_each_node_runs_the_worker_loop_and_its_machine_id_gets_one_profile(
    cluster: Path, tmp_path: Path, small_dataset: Path
) -> None:
    studies = cluster
    (tmp_path / "space.yaml").write_text(SPACE)
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # one host: a file every node reaches
    options = StudyOptions(space=str(tmp_path / "space.yaml"), trials=2, rounds=2, model="fake:32",
                           dataset=str(small_dataset), validate_repeats=0, min_timed_images=0, storage=url)  # fmt: skip
    lines: list[str] = []
    out = run_ray_study(options, log=lines.append)

    machine_id = detect_machine().machine_id
    assert [n.machine_id for n in out.nodes] == [machine_id] and out.nodes[0].cpus == 2
    (worker,) = out.workers
    assert worker["validated_by"] == worker["worker"] and worker["machine_id"] == machine_id
    assert not worker["worker"].endswith(f":{os.getpid()}")  # it ran in a Ray worker, not here
    profile = json.loads(Path(worker["profile"]).read_text())
    assert profile["machine_id"] == machine_id and Path(worker["profile"]).parent == studies / "profiles" / machine_id
    summary = out.summary()
    assert summary["nodes"] == 1 and summary[f"{machine_id}.validated_by"] == worker["worker"]
    assert any("pick validated and saved by" in line for line in lines)

    study = optuna.load_study(study_name=worker["study"], storage=url)
    assert worker["study"].startswith(machine_id)
    assert sum(is_measured(t) for t in study.trials) >= 2
    assert {t.user_attrs["worker"] for t in study.trials} == {worker["worker"]}


def test_the_ray_engine_needs_a_shared_storage(small_dataset: Path) -> None:
    with pytest.raises(ConfigError, match="--engine ray needs --storage"):
        run_ray_study(StudyOptions(dataset=str(small_dataset)))
