"""Process lifetime helpers: workers never outlive the scan that started them, and report failures in one line."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from autotune.atomic import DiskFullError
from autotune.engine.events import Failed
from autotune.errors import AutotuneError, one_line

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when its parent dies, however the parent dies.

    This covers a parent killed with SIGKILL, where no cleanup code can run; the explicit check catches
    a parent that died before the request was made.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: rely on the parent's cleanup
            pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def worker_start(parent_pid: int) -> None:
    """Common start of every worker: die with the parent, leave Ctrl-C to the parent."""
    die_with_parent(parent_pid)
    # The parent owns Ctrl-C handling: it stops every worker itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
