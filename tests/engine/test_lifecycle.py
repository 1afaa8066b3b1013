"""Worker processes: started from a fork server with the scan's current environment, and never outliving it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing.queues import Queue
from pathlib import Path

import psutil
import pytest

from autotune.engine.lifecycle import run_in_environment, worker_context, worker_start


def _report_env(name: str, out: Queue[str | None]) -> None:
    """A worker body: send back what it sees of environment variable ``name``."""
    out.put(os.environ.get(name))


def _seen_in_worker(ctx, name: str, forward: bool) -> str | None:  # type: ignore[no-untyped-def]
    """Start one worker from ``ctx`` and return its value of ``name`` (with or without the environment sent)."""
    out = ctx.Queue()
    args = (dict(os.environ), _report_env, name, out) if forward else (name, out)
    proc = ctx.Process(target=run_in_environment if forward else _report_env, args=args)
    proc.start()
    try:
        return out.get(timeout=60)
    finally:
        proc.join(10)


def test_workers_start_from_the_fork_server_unless_a_fresh_runtime_is_needed() -> None:
    assert worker_context().get_start_method() == "forkserver"
    assert worker_context(fresh_runtime=True).get_start_method() == "spawn"


def test_a_worker_sees_the_environment_of_its_start_not_of_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = worker_context()
    name = "AUTOTUNE_TEST_LATE_SETTING"
    monkeypatch.delenv(name, raising=False)
    _seen_in_worker(ctx, name, forward=True)  # the server is running from here on, without the variable
    monkeypatch.setenv(name, "set after the server started")
    # What the fork server alone gives a child: its own environment, from when it started...
    assert _seen_in_worker(ctx, name, forward=False) is None
    # ... so the engine sends each worker the scan's environment as it is now, as spawn would.
    assert _seen_in_worker(ctx, name, forward=True) == "set after the server started"


def _sleeping_worker(started: Queue[int]) -> None:
    """A worker that would run for a minute unless its starting process's death ends it."""
    worker_start()
    started.put(os.getpid())
    time.sleep(60)


SCRIPT = """
    import sys, time
    sys.path.insert(0, {tests!r})
    from engine.test_lifecycle import _sleeping_worker
    from autotune.engine.lifecycle import worker_context
    if __name__ == "__main__":
        ctx = worker_context()
        started = ctx.Queue()
        procs = [ctx.Process(target=_sleeping_worker, args=(started,), daemon=True) for _ in range(2)]
        for p in procs:
            p.start()
        pids = [started.get(timeout=60) for _ in procs]  # both past their start: killing the scan is all that ends them
        print(" ".join(str(pid) for pid in pids), flush=True)
        time.sleep(60)
"""


def test_workers_and_their_fork_server_end_when_the_scan_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "scan.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parents[1]))))
    scan = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    everyone: list[psutil.Process] = []
    try:
        assert scan.stdout is not None
        workers = [psutil.Process(int(pid)) for pid in scan.stdout.readline().split()]
        assert len(workers) == 2
        servers = {w.ppid() for w in workers}
        assert servers != {scan.pid}, "the workers were not forked from a fork server"
        everyone = workers + [psutil.Process(pid) for pid in servers]
        # SIGKILL, as the kernel's OOM killer sends it: no cleanup code runs in the scan process.
        scan.send_signal(signal.SIGKILL)
        scan.wait(10)
        _, alive = psutil.wait_procs(everyone, timeout=10)
        assert alive == []
    finally:
        scan.kill()
        scan.wait()
        for proc in everyone:  # a failed check leaves nothing behind either
            if proc.is_running():
                proc.kill()


def _worker_with_a_library_lock(out: Queue[str]) -> None:
    """A worker body that opens what torch.compile's tqdm bar opens: a multiprocessing RLock (a named semaphore)."""
    import multiprocessing

    worker_start()
    lock = multiprocessing.RLock()  # the worker's default context: the fork server's, so the name is kept
    out.put(lock._semlock.name)  # type: ignore[attr-defined]
    time.sleep(60)


def test_a_terminated_worker_releases_what_libraries_opened_in_it() -> None:
    # A stopped scan terminates its workers; their finalizers must still unlink the names libraries created
    # in them, or the resource tracker reports them as leaked when the run ends.
    ctx = worker_context()
    out = ctx.Queue()
    proc = ctx.Process(target=_worker_with_a_library_lock, args=(out,))
    proc.start()
    try:
        name = out.get(timeout=60)
        assert name and Path(f"/dev/shm/sem.{name.lstrip('/')}").exists()
        proc.terminate()
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == -signal.SIGTERM  # still reported as killed by SIGTERM
    assert not Path(f"/dev/shm/sem.{name.lstrip('/')}").exists()
