"""One trial's measurement in the trial process: timed rounds, reuse, early stop, failures, no leftover processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from processes import leftover_processes

from autotune.engine.config import EngineConfig
from autotune.engine.transport import SHM_DIR, SHM_PREFIX, mapped_semaphores, segment_names, segment_prefix
from autotune.tuner import objective
from autotune.tuner.objective import ScanSpec, TrialFailed, TrialStopped, measure
from autotune.tuner.trial_process import _RoundTracker, trial_records

FAKE = "fake:32"
CONFIG = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)


def _children() -> list[psutil.Process]:
    """Every live descendant of this process but multiprocessing's resource tracker."""
    out = []
    for k in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(k.cmdline()) and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Any:
    yield
    objective.close_trial_process()  # kept between trials by design; once it is closed, nothing may be left
    assert leftover_processes() == []


def _spec(dataset: Path, **kw: Any) -> ScanSpec:
    base: dict[str, Any] = dict(dataset=str(dataset), model=FAKE, rounds=3, timeout_s=120)
    base.update(kw)
    return ScanSpec(**base)


def test_measure_times_every_round_after_warmup(small_dataset: Path) -> None:
    seen: list[tuple[int, float]] = []
    m = measure(CONFIG, _spec(small_dataset), on_round=lambda k, r: seen.append((k, r)) and False)
    assert len(m.round_images_per_s) == 3 and [k for k, _ in seen] == [0, 1, 2]
    assert all(r > 0 for r in m.round_images_per_s)
    assert m.images_per_s == m.round_images_per_s[-1] > 0
    assert m.images == 8 * (1 + 3 + 1)  # warm-up, timed and drain rounds of the config's own batch
    assert m.timed_images >= 24 and m.window_s > 0 and m.reused_images == 0
    attrs = m.attrs()
    for key in ("images_per_s", "round_images_per_s", "startup_s", "warmup_s", "window_s", "drain_s",
                "timed_images", "reused_images", "steady_images_per_s", "bottleneck", "stage_seconds",
                "peak_rss_mb", "threads", "affinity", "skipped", "images"):  # fmt: skip
        assert key in attrs, key
    assert attrs["images_per_s"] == m.images_per_s


MEASURE_IN_A_SMALL_PROCESS = """
import subprocess, sys
from autotune.engine.config import EngineConfig
from autotune.tuner.objective import ScanSpec, measure
TORCH_ALONE = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
if __name__ == "__main__":
    cfg = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)
    trial = measure(cfg, ScanSpec(dataset=sys.argv[1], model="fake:32", rounds=2)).peak_rss_mb
    torch_alone = float(subprocess.run([sys.executable, "-c", TORCH_ALONE], capture_output=True, text=True).stdout)
    print(trial, torch_alone)
"""


def test_peak_memory_is_the_largest_process_of_the_trial(small_dataset: Path, tmp_path: Path) -> None:
    """Every worker has torch loaded (the producer resizes with it), the trial's own process does not: the
    trial's peak is a worker's, though the workers, forked from the fork server, are not its children."""
    # Both from a small parent: a spawned process starts from its parent's peak (Linux keeps it across exec),
    # and this test process's would hide the workers'.
    script = tmp_path / "measure.py"
    script.write_text(MEASURE_IN_A_SMALL_PROCESS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    trial = subprocess.run([sys.executable, str(script), str(small_dataset)], env=env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    trial_mb, torch_alone_mb = map(float, trial.stdout.split()[-2:])
    # A forked worker counts the torch pages it shares with the server and has touched (about 0.8 of an import
    # of its own here); the trial's process alone is about 0.2.
    assert trial_mb >= 0.5 * torch_alone_mb


def test_two_replicas_with_big_batches_are_measurable_and_reuse_images(small_dataset: Path) -> None:
    """A configuration whose rounds need more images than the database has: reused in order, and said so."""
    cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=16)
    spec = _spec(small_dataset, rounds=2)
    assert spec.images_for(cfg) == 32 * 4 > 48
    m = measure(cfg, spec)
    assert len(m.round_images_per_s) == 2 and m.images_per_s > 0
    assert m.reused_images == 32 * 4 - 48 and m.images == 128


def test_small_rounds_get_more_timed_rounds_and_the_study_bound_covers_them() -> None:
    """min_timed_images lengthens the window of small rounds only; max_trial_images bounds every round size."""
    from autotune.tuner.options import max_trial_images

    spec = ScanSpec(dataset="-", model=FAKE, rounds=4, min_timed_images=100)
    small = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)
    big = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=64)
    assert spec.timed_rounds(small) == 13 and spec.images_for(small) == 8 * 15  # 13 rounds hold >= 100 images
    assert spec.timed_rounds(big) == 4 and spec.images_for(big) == 128 * 6
    space = SimpleNamespace(largest=lambda name, d: {"cpu_models": 2, "cpu_batch": 64}.get(name, d))
    assert max_trial_images(space, spec, gpus=0) == 128 * 6
    worst = max(spec.images_for(EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=b))
                for b in range(1, 65))  # fmt: skip
    bound_spec = ScanSpec(dataset="-", model=FAKE, rounds=1, min_timed_images=100)
    one = SimpleNamespace(largest=lambda name, d: {"cpu_models": 1, "cpu_batch": 64}.get(name, d))
    assert max_trial_images(one, bound_spec, gpus=0) >= max(
        bound_spec.images_for(EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=b)) for b in range(1, 65)
    )
    assert worst <= max_trial_images(one, spec, gpus=0)


def test_overhead_and_prediction_for_a_database_size() -> None:
    """The time beyond the steady rate is kept apart; a prediction for n images adds it once."""
    from autotune.tuner.profile import predict_seconds

    m = objective.Measurement(
        round_images_per_s=[50.0], startup_s=3.0, warmup_s=1.0, window_s=2.0, drain_s=0.5, timed_images=100,
        reused_images=0, steady_images_per_s=50.0, bottleneck="", stage_seconds={}, peak_rss_mb=0.0, threads=[],
        affinity=[], skipped=0, images=150,
    )  # fmt: skip
    assert m.overhead_s == pytest.approx(3.5 - 150 / 50)
    assert predict_seconds(1000, 50.0, m.overhead_s) == pytest.approx(20.5)
    assert predict_seconds(1000, 0.0) == float("inf")


def test_round_tracker_starts_after_every_replica_warmed_up() -> None:
    spec = ScanSpec(dataset="-", model=FAKE, rounds=2)
    cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=10)
    sent: list[tuple[Any, ...]] = []
    track = _RoundTracker(spec, cfg, sent.append, SimpleNamespace(poll=lambda: False))
    log: list[tuple[float, int, int]] = []
    done = 0
    # Replica 0 finishes two batches before replica 1 finishes its first: the clock starts at t=3.
    for t, c in ((1.0, 0), (2.0, 0), (3.0, 1), (4.0, 0), (5.0, 1), (6.0, 0), (7.0, 1)):
        log.append((t, 10, c))
        done += 10
        track(SimpleNamespace(images=done, elapsed_s=t, batch_log=log))
    assert track.t_a == 3.0 and track.n_a == 30
    assert sent == [("round", 0, 20 / 2.0), ("round", 1, 40 / 4.0)]


def test_trial_records_reuse_in_order_under_new_ids() -> None:
    from autotune.data.sources import Record

    recs = [Record(i, f"f{i}.jpg", None) for i in range(5)]
    out, reused = trial_records(recs, offset=3, need=5)
    assert [r.locator for r in out] == ["f3.jpg", "f4.jpg", "f3.jpg", "f4.jpg", "f3.jpg"] and reused == 3
    assert [r.id for r in out] == list(range(5))
    assert trial_records(recs, offset=0, need=4) == (recs[:4], 0)


def test_scan_size_too_small_names_the_minimum() -> None:
    spec = ScanSpec(dataset="-", model=FAKE, rounds=4, scan_size=100)
    msg = spec.too_small_for(EngineConfig(cpu_models=2, cpu_batch=16, cpu_threads=1))
    assert msg is not None and "192 images" in msg


def _trial_pid() -> int | None:
    """The pid of the process kept between trials, if there is one."""
    return objective._RUNNER.proc.pid if objective._RUNNER is not None else None


def test_one_trial_process_serves_trials_until_one_ends_uncleanly(
    small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its fork server (torch imported) serves every trial; a trial that overruns takes the process with it."""
    spec = _spec(small_dataset, rounds=2)
    assert measure(CONFIG, spec).extra["trial_in_process"] == 1  # its start-up includes the fork server's
    first = _trial_pid()
    assert first is not None and measure(CONFIG, spec).extra["trial_in_process"] == 2
    assert _trial_pid() == first
    with pytest.raises(TrialStopped):  # a pruning stop the trial answers: a clean end, the process stays
        measure(CONFIG, spec, on_round=lambda k, rate: True)
    assert _trial_pid() == first
    # A short grace only now: the pruned trial above answers within the real one however loaded the machine is
    # (a short one lost it twice in full runs), and the overrunning batch (5 s) outlasts this one.
    monkeypatch.setattr(objective, "STOP_GRACE_S", 1.5)
    with pytest.raises(TrialFailed, match="timeout"):
        measure(CONFIG, _spec(small_dataset, timeout_s=2.0, fake_delay_s=5.0))
    assert _trial_pid() is None and _gone(first)
    assert measure(CONFIG, spec).extra["trial_in_process"] == 1  # a new process for the next trial
    assert _trial_pid() not in (None, first)


def test_on_round_true_stops_the_trial(small_dataset: Path) -> None:
    cfg = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=4)
    calls: list[int] = []

    def stop(k: int, rate: float) -> bool:
        calls.append(k)
        return True

    with pytest.raises(TrialStopped) as info:
        measure(cfg, _spec(small_dataset, rounds=6), on_round=stop)
    assert calls[0] == 0
    assert info.value.args[0] and info.value.args[0][0] > 0  # the rounds seen before the stop


def test_a_model_that_cannot_load_fails_the_trial(small_dataset: Path) -> None:
    with pytest.raises(TrialFailed) as info:
        measure(CONFIG, _spec(small_dataset, model="synthetic:nonexistent"))
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert "nonexistent" in msg or "Error" in msg


def test_a_missing_dataset_fails_the_trial(tmp_path: Path) -> None:
    with pytest.raises(TrialFailed) as info:
        measure(CONFIG, _spec(tmp_path / "no-such-folder"))
    assert "\n" not in str(info.value)


def test_timeout_fails_the_trial(small_dataset: Path) -> None:
    # Starting the child alone (spawn, imports) takes longer than the limit: the scan is told to stop.
    with pytest.raises(TrialFailed, match="timeout"):
        measure(CONFIG, _spec(small_dataset, timeout_s=0.3))


class _Watcher(threading.Thread):
    """Records, while a trial runs, every descendant process (pid -> parent pid) and project shm segment."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.parents: dict[int, int] = {}
        self.segments: set[str] = set()
        self.semaphores: dict[int, set[str]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Poll every 50 ms until told to stop."""
        while not self._stop_event.wait(0.05):
            for kid in _children():
                try:
                    self.parents.setdefault(kid.pid, kid.ppid())
                except psutil.NoSuchProcess:
                    continue
                self.semaphores.setdefault(kid.pid, set()).update(mapped_semaphores(kid.pid))
            self.segments |= {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)}

    def stop(self) -> None:
        """End the polling."""
        self._stop_event.set()
        self.join()


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_trial_killed_for_overrunning_leaves_no_segment_and_no_worker(
    small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 8 images at 1 s each: the child is busy in its first batch, never reads "stop", and is
    # killed once the short grace period is over.
    monkeypatch.setattr(objective, "STOP_GRACE_S", 0.5)
    helpers = {p.pid for p in _children()}  # this process's own fork server, if an earlier test started it
    watcher = _Watcher()
    watcher.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TrialFailed, match="timeout"):
            measure(CONFIG, _spec(small_dataset, timeout_s=6.0, fake_delay_s=1.0))
    finally:
        watcher.stop()
    assert time.monotonic() - t0 < 12
    trials = [pid for pid, ppid in watcher.parents.items() if ppid == os.getpid() and pid not in helpers]
    assert len(trials) == 1, watcher.parents
    trial = trials[0]
    # The child got as far as creating its slot pool and workers (else the test would prove nothing)...
    assert any(name.startswith(segment_prefix(trial)) for name in watcher.segments), watcher.segments
    # Its workers: its children and theirs (the fork server it started, the producer and replica forked from it).
    workers = [pid for pid, ppid in watcher.parents.items() if ppid == trial]
    workers += [pid for pid, ppid in watcher.parents.items() if ppid in workers]
    assert len(workers) >= 3, watcher.parents
    # ... and neither its segment nor its workers (the fork server ends with it, and every worker with its
    # parent, through PR_SET_PDEATHSIG) outlive it.
    assert segment_names(trial) == []
    # Nor the named semaphores of its queues: before, they stayed until the study's resource tracker unlinked
    # them at its end ("There appear to be 4 leaked semaphore objects").
    semaphores = set().union(*(watcher.semaphores.get(pid, set()) for pid in [trial, *workers]))
    assert semaphores, watcher.semaphores
    assert [name for name in semaphores if (SHM_DIR / f"sem.{name[1:]}").exists()] == []
    deadline = time.monotonic() + 5.0
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if not _gone(pid)] == []


GROUP_TERM_SCRIPT = """
    import sys
    from autotune.engine.config import EngineConfig
    from autotune.engine.lifecycle import terminate_as_interrupt
    from autotune.tuner.objective import ScanSpec, measure

    def said(k, rate):
        print("round", k, flush=True)
        return False

    if __name__ == "__main__":
        terminate_as_interrupt()  # what the CLI does for the study's own process
        spec = ScanSpec(dataset={dataset!r}, model="fake:32", rounds=50, timeout_s=120, fake_delay_s=0.2)
        try:
            measure(EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=4), spec, on_round=said)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
"""


def test_sigterm_to_the_study_group_mid_trial_releases_everything(small_dataset: Path, tmp_path: Path) -> None:
    # `timeout`, a batch system or systemd signal the whole process group: the trial process and its engine's
    # workers get SIGTERM at the same moment as the study. The trial process must unwind its scan (which
    # unlinks its semaphores) rather than die with them left to the resource tracker's "leaked" warning.
    script = tmp_path / "study.py"
    script.write_text(textwrap.dedent(GROUP_TERM_SCRIPT.format(dataset=str(small_dataset))))
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    study = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        assert study.stdout is not None
        line = study.stdout.readline()
        assert line.startswith("round"), line + (study.stderr.read() if study.stderr else "")
        os.killpg(study.pid, signal.SIGTERM)
        out, err = study.communicate(timeout=60)
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
            study.wait()
    assert study.returncode == 130 and "interrupted" in out, (out, err)
    assert "leaked" not in err and "Traceback" not in err, err
    assert segment_names(study.pid) == []
