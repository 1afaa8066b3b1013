"""A Ray cluster of several nodes on this one machine, every listener on the loopback interface.

For tests, drills and `autotune bench ray --nodes N`: a head and N-1 more raylets, each with its own CPUs, all
started from this process with Ray's own :class:`ray.cluster_utils.Cluster` and stopped by their process ids
(``ray stop`` would end every Ray on the machine). Why not ``ray start``: Ray binds its servers to 127.0.0.1
only when a node's IP is exactly 127.0.0.1, and resolves ``--node-ip-address 127.0.0.1`` to the machine's
outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, with which ``ray start --address`` refuses to
join a second node at all (Ray 2.60; any other loopback address, 127.0.0.2, makes the servers bind every
interface). ``Cluster`` starts the same raylets without that check, so every byte stays on loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError, one_line

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AGENT_PORTS = ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port", "runtime_env_agent_port")


def _free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` while a node starts (its processes inherit it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def code_path() -> str:
    """``PYTHONPATH`` for Ray's workers: this autotune's folder first, so every node imports the driver's code."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([root, rest]) if rest else root


class LoopbackCluster:
    """``nodes`` Ray nodes of ``cpus`` CPUs each on this machine, listening on 127.0.0.1 only.

    Each node may get environment variables of its own (``node_env``: e.g. its own ``AUTOTUNE_STUDIES``, as
    separate machines have). Use it as a context manager: the nodes are stopped, by process id, whatever
    happens; :meth:`kill_node` SIGKILLs one node's processes as a lost machine would vanish.

    Example:
        >>> with LoopbackCluster(nodes=2, cpus=1) as cluster:  # doctest: +SKIP
        ...     run_scan_ray(source, model, config, address=cluster.address)
    """

    def __init__(
        self, nodes: int = 2, cpus: int = 1, *, object_store_mb: int = 150,
        node_env: Sequence[Mapping[str, str]] | None = None,
    ) -> None:  # fmt: skip
        """Plan the cluster (nothing starts before :meth:`start`)."""
        if nodes < 1 or cpus < 1:
            raise ConfigError(f"a local Ray cluster needs at least 1 node of 1 CPU, got {nodes} x {cpus}")
        self.nodes, self.cpus, self.object_store_mb = nodes, cpus, object_store_mb
        self.node_env = list(node_env or [{}] * nodes)
        if len(self.node_env) != nodes:
            raise ConfigError(f"node_env has {len(self.node_env)} entries for {nodes} nodes")
        self._cluster: Any = None
        self._nodes: list[Any] = []
        self._temp = ""

    @property
    def address(self) -> str:
        """The head's GCS address (``127.0.0.1:PORT``), what ``--address`` takes."""
        if self._cluster is None:
            raise ConfigError("the local Ray cluster is not started")
        return str(self._cluster.address)

    def start(self, attempts: int = 3) -> LoopbackCluster:
        """Start the head and the other nodes; a failed start (a loaded machine) is cleaned up and tried again."""
        if "ray" not in sys.modules:
            os.environ.setdefault(CLUSTERS_ENV, "0")
        from ray._private import ray_constants

        # Ray reads the variable once, on import (which may have happened already, with clusters on); its node-IP
        # lookup asks the constant at every call. Off, every node and this driver take 127.0.0.1, which is what
        # makes Ray's servers bind loopback only. It stays off in this process: the driver joins as 127.0.0.1.
        ray_constants.ENABLE_RAY_CLUSTER = False
        for attempt in range(attempts):
            try:
                self._start()
                return self
            except Exception as exc:  # Ray raises a bare Exception when a node times out starting up
                self.stop()
                if attempt == attempts - 1:
                    raise ConfigError(f"cannot start a local {self.nodes}-node Ray cluster: {one_line(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _start(self) -> None:
        """One try at starting every node (agents' ports given: left to pick their own, a loaded raylet may time
        out waiting for them to report)."""
        from ray.cluster_utils import Cluster

        # Short: Ray's socket paths must fit in 107 characters.
        self._temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        common = {"num_cpus": self.cpus, "object_store_memory": self.object_store_mb << 20, "temp_dir": self._temp}
        for i, env in enumerate(self.node_env):
            ports = {name: _free_port() for name in _AGENT_PORTS}
            with _environ({"PYTHONPATH": code_path(), CLUSTERS_ENV: "0", **env}):
                if i == 0:
                    self._cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                                            head_node_args={**common, **ports, "include_dashboard": False})  # fmt: skip
                    self._nodes.append(self._cluster.head_node)
                else:
                    self._nodes.append(self._cluster.add_node(**common, **ports))

    def node_pids(self, index: int) -> list[int]:
        """The processes of node ``index``: its raylet and everything under it, and its other services."""
        import psutil

        pids: list[int] = []
        for infos in self._nodes[index].all_processes.values():
            for info in infos:
                pids.append(info.process.pid)
                with contextlib.suppress(psutil.Error):
                    pids.extend(c.pid for c in psutil.Process(info.process.pid).children(recursive=True))
        return pids

    def pids(self) -> list[int]:
        """Every process of every node."""
        return [pid for i in range(len(self._nodes)) for pid in self.node_pids(i)]

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of node ``index`` (not the head's GCS: ``index`` 0 is refused)."""
        if index == 0:
            raise ConfigError("the head node holds the cluster's state: kill another node")
        for pid in self.node_pids(index):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def listeners_beyond_loopback(self) -> list[tuple[int, str, int]]:
        """(pid, address, port) of every listening socket of the cluster's processes not on loopback."""
        import psutil

        out = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections("inet"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in LOOPBACK:
                        out.append((pid, conn.laddr.ip, conn.laddr.port))
        return out

    def stop(self) -> None:
        """Stop every node by its processes' ids (never ``ray stop``) and remove the session folder.

        A driver connected here disconnects first: left connected, it would wait for the vanished cluster.
        """
        import ray

        if self._cluster is not None and ray.is_initialized():
            ray.shutdown()
        pids = self.pids() if self._nodes else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:  # reap our children, so that none is left a zombie
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        self._nodes, self._cluster = [], None
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = ""

    def __enter__(self) -> LoopbackCluster:
        """Start the cluster."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop it, whatever happened."""
        self.stop()
