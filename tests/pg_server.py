"""A throwaway PostgreSQL server on loopback for tests: Debian's binaries, a private data folder, a free port.

Debian installs the server binaries under /usr/lib/postgresql/<version>/bin, off PATH; `make test-deps`
installs the `postgresql` package where it is missing (as it does Chromium). ``initdb`` refuses to run as
root, so as root the server runs as the `postgres` user the package creates, from a folder under /tmp that
user can reach (pytest's own temporary folders are private to root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PgServer:
    """A running server: its port, and the SQLAlchemy URL of a fresh database on it."""

    port: int
    url: str


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def why_unavailable() -> str | None:
    """None when a server can be started here, else the reason (for a skip)."""
    if find_bin() is None:
        return "PostgreSQL is not installed (`make test-deps` installs Debian's postgresql package as root)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run initdb as"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` as the postgres user when we are root (initdb and postgres refuse root), else as is."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], timeout: float = 60) -> None:
    """Run a server tool; its output goes into the error when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")


@contextlib.contextmanager
def postgres_server(database: str = "autotune") -> Iterator[PgServer]:
    """Start a server on 127.0.0.1 (trust authentication, socket in its own folder), create ``database``, and
    stop it and remove every file on exit."""
    bindir = find_bin()
    assert bindir is not None, why_unavailable()
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = _free_port()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        _run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                              "--no-sync", "-E", "UTF8"]))  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"
        _run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w",
                              "-t", "60", "start"]))  # fmt: skip
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield PgServer(port, f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}")
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                _run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]))
        # Give the postmaster a moment to remove its files before the folder goes.
        time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
