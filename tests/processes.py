"""What a test may find still running after a scan: nothing but the process's own long-lived helpers."""

from __future__ import annotations

import os
import time

import psutil

# Started once per process on first use and kept until that process exits: multiprocessing's resource tracker,
# and the fork server the engine starts its workers from (autotune.engine.lifecycle.worker_context).
_HELPERS = ("resource_tracker", "multiprocessing.forkserver")


def _cmdline(proc: psutil.Process) -> str:
    """A process's command line, or '' once it has gone."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _alive(proc: psutil.Process) -> bool:
    """Whether a process still runs (a zombie waiting to be reaped has finished)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftover_processes(wait_s: float = 5.0) -> list[psutil.Process]:
    """This process's descendants still running ``wait_s`` seconds from now at the latest, apart from its own
    helpers (their children are not helpers: a fork server's workers must be gone too).

    A process that exits as a consequence of another's exit (a fork server whose client died) takes a moment:
    the wait returns as soon as none is left.
    """
    me = os.getpid()
    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p in psutil.Process(me).children(recursive=True)
                if _alive(p) and not (p.ppid() == me and any(h in _cmdline(p) for h in _HELPERS))]  # fmt: skip
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
