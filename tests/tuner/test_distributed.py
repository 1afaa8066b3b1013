"""One study shared by two `autotune study` workers through a real PostgreSQL server; one is killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from pg_server import PgServer, postgres_server, why_unavailable

from autotune.engine.transport import SHM_DIR, mapped_semaphores
from autotune.tuner.search import is_measured
from autotune.tuner.storage import reader_storage

pytestmark = pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable()))

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 4  # --trials: the total across both workers
SPACE_PARAMS = 3  # what the space below lets the sampler choose

SPACE = """\
name: shared
device: cpu
params:
  cpu_threads: {type: int, low: 1, high: "min(2, cores)"}
  cpu_batch:   {type: categorical, choices: [4, 8]}
  scheduling:  {type: categorical, choices: [dynamic, static]}
fixed: {producers: 1, cpu_models: 1, gpu_models: 0}
defaults: {cpu_threads: 1, cpu_batch: 8, scheduling: dynamic}
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL server on loopback for this module, removed afterwards."""
    with postgres_server() as server:
        yield server


OPEN_AT = """
import sys, time
from autotune.tuner.storage import writer_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
writer_storage(sys.argv[1])
"""


def test_workers_starting_together_on_an_empty_database_all_open_it(pg: PgServer) -> None:
    """Machines started at once race to create Optuna's tables; every one of them must get the storage."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute('CREATE DATABASE "together"')
    url = pg.url.rsplit("/", 1)[0] + "/together"
    at = time.time() + 5  # every process has imported Optuna by then, and opens the storage at this instant
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, str(at)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)


def _worker(tmp: Path, name: str, url: str, dataset: Path) -> subprocess.Popen[bytes]:
    """`autotune study` as its own process group (a machine: killing it kills its engine processes too)."""
    home = tmp / name
    home.mkdir()
    env = {
        **os.environ,
        "AUTOTUNE_STUDIES": str(home / "studies"),  # each machine keeps its own profiles
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable, "-m", "autotune", "study", "--space", str(tmp / "space.yaml"), "--model", "fake:32",
        "--dataset", str(dataset), "--trials", str(TOTAL), "--rounds", "2", "--validate-repeats", "0",
        "--storage", url, "--heartbeat", "1", "--json",
    ]  # fmt: skip
    with open(home / "out.json", "wb") as out, open(home / "log.txt", "wb") as log:
        return subprocess.Popen(cmd, stdout=out, stderr=log, env=env, start_new_session=True)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _study(url: str) -> optuna.Study:
    """The one study in the storage, read without a heartbeat (one storage per server: the polling loop opened
    a connection pool per read and exhausted the server's connections)."""
    if url not in _STORAGES:
        # The project's opener: the workers may be creating the tables at this very moment.
        _STORAGES[url] = reader_storage(url)
    storage = _STORAGES[url]
    (summary,) = storage.get_all_studies()
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _running_on(url: str, worker: str) -> optuna.trial.FrozenTrial | None:
    """A trial ``worker`` is measuring now, once some trial has completed (so that there is one to lose)."""
    try:
        trials = _study(url).get_trials(deepcopy=False)
    except (ValueError, KeyError):
        return None  # the study is not created yet
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return None
    running = optuna.trial.TrialState.RUNNING
    # Measuring: every parameter of the space chosen (a worker frozen between two suggestions is not mid-trial
    # yet, and its retry would rightly keep only the parameters chosen so far).
    return next((t for t in trials if t.state == running and t.user_attrs.get("worker") == worker
                 and len(t.params) == SPACE_PARAMS), None)  # fmt: skip


def _crash(group: int) -> None:
    """SIGKILL a process group as a machine would die, and remove the named semaphores it held in /dev/shm.

    A dead machine takes its /dev/shm with it; here the group's resource tracker, which would unlink them, dies
    with the rest, so the names its processes mapped are unlinked by hand (every make test left 17 otherwise).
    """
    names: set[str] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:  # field 5: the process group
                names |= mapped_semaphores(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # a process that ended meanwhile
            continue
    os.killpg(group, signal.SIGKILL)
    for name in names:  # not release_semaphores: they were registered with the dead group's tracker, not ours
        (SHM_DIR / f"sem.{name.lstrip('/')}").unlink(missing_ok=True)


def _kill_mid_trial(victim: subprocess.Popen[bytes], url: str, worker: str, log: Path) -> optuna.trial.FrozenTrial:
    """SIGKILL ``victim`` while it measures a trial, after a first trial has completed; the trial it died in.

    The whole process group is frozen (SIGSTOP) before the storage is read again, so the trial seen RUNNING
    cannot complete between that read and the kill; when it did complete just before the freeze, the worker
    is let go (SIGCONT) to start its next trial.
    """
    deadline = time.monotonic() + 600  # a safety net: a few seconds on an idle machine
    while True:
        assert time.monotonic() < deadline, "worker a never ran a trial after a first one completed"
        assert victim.poll() is None, log.read_text()[-3000:]
        seen = _running_on(url, worker)
        if seen is not None:
            os.killpg(victim.pid, signal.SIGSTOP)
            now = next(t for t in _study(url).get_trials(deepcopy=False) if t.number == seen.number)
            if now.state == optuna.trial.TrialState.RUNNING:
                _crash(victim.pid)
                victim.wait(timeout=30)
                return now
            os.killpg(victim.pid, signal.SIGCONT)
        time.sleep(0.1)


def test_two_workers_share_a_study_and_survive_one_killed_mid_trial(
    tmp_path: Path, small_dataset: Path, pg: PgServer
) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    victim = _worker(tmp_path, "a", pg.url, small_dataset)
    survivor = _worker(tmp_path, "b", pg.url, small_dataset)
    host = socket.gethostname()
    try:
        doomed = _kill_mid_trial(victim, pg.url, f"{host}:{victim.pid}", tmp_path / "a" / "log.txt")
        completed = {
            t.number: t.value for t in _study(pg.url).trials if t.state == optuna.trial.TrialState.COMPLETE
        }
        assert survivor.wait(timeout=600) == 0, (tmp_path / "b" / "log.txt").read_text()[-3000:]
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                _crash(proc.pid)
                proc.wait(timeout=30)

    study = _study(pg.url)
    trials = {t.number: t for t in study.trials}
    # No completed trial is lost; the killed one is failed and its parameters measured again by the survivor.
    for number, value in completed.items():
        assert trials[number].state == optuna.trial.TrialState.COMPLETE and trials[number].value == value
    assert trials[doomed.number].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == doomed.number]
    assert retry.params == doomed.params and retry.user_attrs["worker"] == f"{host}:{survivor.pid}"
    assert retry.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # The study reaches its total across both workers, with the default enqueued once.
    assert sum(is_measured(t) for t in study.trials) >= TOTAL
    assert sum(1 for t in study.trials if t.user_attrs.get("default") and "failed_trial" not in t.system_attrs) == 1
    workers = {t.user_attrs.get("worker") for t in study.trials}
    assert f"{host}:{victim.pid}" in workers and f"{host}:{survivor.pid}" in workers
    # The survivor validated and saved the pick, once, and says so.
    out = json.loads((tmp_path / "b" / "out.json").read_text())
    assert out["validated_by"] == out["worker"] == f"{host}:{survivor.pid}"
    assert study.user_attrs[f"claim:pick:{TOTAL}"]["worker"] == out["worker"]
    assert out["profile"] and Path(out["profile"]).is_file()
    assert not (tmp_path / "a" / "studies" / "profiles").exists()


def _database(pg: PgServer, name: str) -> str:
    """A fresh database on the server, for a study of its own."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + "/" + name


def _in_use(studies: Path) -> set[str]:
    """Ids of the profiles in use in a studies folder (every machine, every architecture)."""
    files = studies.glob("profiles/*/current.json")
    return {e["id"] for f in files for e in json.loads(f.read_text())["current"].values()}


@pytest.mark.slow  # two study workers and a pull: about a minute on the loaded 2-core machine
def test_every_worker_of_a_shared_study_ends_with_its_pick_and_a_later_machine_pulls_it(
    tmp_path: Path, small_dataset: Path, pg: PgServer
) -> None:
    """Each worker keeps its own studies folder (separate machines): the pick reaches both, and a third pulls it."""
    (tmp_path / "space.yaml").write_text(SPACE)
    url = _database(pg, "reach")
    workers = [_worker(tmp_path, name, url, small_dataset) for name in ("a", "b")]
    try:
        for name, proc in zip("ab", workers, strict=True):
            assert proc.wait(timeout=600) == 0, (tmp_path / name / "log.txt").read_text()[-3000:]
    finally:
        for proc in workers:
            if proc.poll() is None:
                _crash(proc.pid)
                proc.wait(timeout=30)
    outs = {name: json.loads((tmp_path / name / "out.json").read_text()) for name in "ab"}
    assert {o["validated_by"] for o in outs.values()} == {outs["a"]["validated_by"]}  # one validated it
    (pick,) = _in_use(tmp_path / "a" / "studies")
    assert _in_use(tmp_path / "b" / "studies") == {pick}
    for name in "ab":
        assert Path(outs[name]["profile"]).stem == pick
    # A machine that joins later installs it with `autotune profile pull`.
    later = tmp_path / "c" / "studies"
    env = {**os.environ, "AUTOTUNE_STUDIES": str(later),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "autotune", "profile", "pull", "--storage", url, "--json"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (installed,) = json.loads(proc.stdout)["installed"]
    assert installed["id"] == pick and installed["in_use"] and _in_use(later) == {pick}
