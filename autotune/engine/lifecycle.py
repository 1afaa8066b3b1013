"""Process lifetime helpers: workers never outlive the scan that started them, and report failures in one line."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import multiprocessing.util as util
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import ForkServerContext, SpawnContext

from autotune.atomic import DiskFullError
from autotune.engine.events import Failed
from autotune.errors import AutotuneError, one_line

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End this worker as soon as the process that started it dies, however it dies.

    A process killed with SIGKILL runs no cleanup code, so the worker watches for it: the kernel's
    parent-death signal covers a spawned worker, and a watcher thread waits on the starting process's
    sentinel pipe, which covers a worker forked from the fork server too (the server is its parent; it
    would outlive the scan, and so would the worker, since every fork-server child keeps the server's
    lifeline open). The first check catches a parent that died before either was set up.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watcher thread still acts
            pass
    parent = mp.parent_process()
    if parent is None:
        return
    if not parent.is_alive():
        os._exit(1)
    threading.Thread(target=_exit_when_gone, args=(parent.sentinel,), name="parent-watch", daemon=True).start()


def _exit_when_gone(sentinel: int) -> None:
    """Block until the starting process's sentinel closes (it died or exited), then end this process at once."""
    mp_connection.wait([sentinel])
    os._exit(1)


def worker_start() -> None:
    """Common start of every worker: die with the parent, leave Ctrl-C to the parent, release on SIGTERM."""
    die_with_parent()
    # The parent owns Ctrl-C handling: it stops every worker itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _release_and_die)


def _release_and_die(signum: int, frame: object) -> None:
    """SIGTERM (a stopped scan's workers get it): run multiprocessing's finalizers, then die of the signal.

    Libraries create named semaphores in the worker, which only a finalizer unlinks (torch.compile's FX
    interpreter opens a tqdm bar, whose class-level lock is a multiprocessing RLock): a worker dying of the
    default action left one per compiled replica to the resource tracker's end-of-run "leaked" warning. Only
    finalizers of priority >= 0 run (unlinking names, closing queues), not the joins of queue feeder threads,
    which could block on a pipe nobody reads any more; the exit status stays "killed by SIGTERM".
    """
    # multiprocessing has no public way to run its finalizers without exiting.
    util._run_finalizers(0)  # type: ignore[attr-defined]  # pylint: disable=protected-access
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# What the scan's workers import first thing: the fork server imports them once, so a worker starts in ~0.1 s
# instead of ~2.5 (torch alone is ~2 s of one core). Model runtimes (ONNX Runtime, OpenVINO, transformers) are
# left out: each worker imports only the one its backend needs, after its thread count is set.
WORKER_PRELOAD = ("torch", "autotune.engine.consumer", "autotune.engine.producer", "autotune.preprocess.geometry")


def worker_context(fresh_runtime: bool = False) -> SpawnContext | ForkServerContext:
    """The multiprocessing context the scan's workers start from: a fork server with torch imported, else spawn.

    Neither forks the scan's own process (threads, CUDA, a torch thread pool already running are unsafe to
    fork); the fork server is a clean process started on first use, which imports :data:`WORKER_PRELOAD`
    and never runs a kernel, so its forked children may set their threads and devices as a spawned one would.
    ``fresh_runtime`` asks for spawn: a setting that only takes effect while torch's OpenMP runtime loads
    (``OMP_WAIT_POLICY``) needs a process that has not imported torch yet.
    """
    if fresh_runtime or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))  # read only when the server starts: later calls change nothing
    return ctx


def run_in_environment(env: dict[str, str], target: Callable[..., None], *args: object) -> None:
    """Run a worker's main function under ``env``, the scan's environment when it started the worker.

    A fork server's children inherit the server's environment, fixed when the server started; a scan may
    run later with other settings (a cache folder, a device list), which a spawned worker would have seen.
    """
    os.environ.clear()
    os.environ.update(env)
    target(*args)


def terminate_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt in the main process, so cleanup (finally blocks) runs."""

    def _raise(signum: int, frame: object) -> None:
        """The signal handler: unwind as Ctrl-C does."""
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def error_summary(exc: BaseException) -> str:
    """One line naming a worker's failure: a user-facing error's own message, else ``Type: message``.

    Only the first line of a message is kept (a torch error's last line is often a hint about an unrelated
    setting), so whatever the parent raises from it is one line too.
    """
    message = one_line(str(exc))
    if isinstance(exc, AutotuneError) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def error_event(role: str, index: int, exc: BaseException) -> Failed:
    """The event a failing worker sends: its one-line summary, and whether the disk is full."""
    return Failed(role, index, error_summary(exc), isinstance(exc, DiskFullError))
