"""A real Ray cluster for tests: one node on this machine, loopback only, small; started in the test process."""

from __future__ import annotations

import os
import socket
from typing import Any

# A Ray head binds to this machine's outward address unless told clusters are off, which Ray reads when it is
# first imported: this module must be imported before ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _free_port() -> int:
    """A port nothing listens on now, on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cluster(attempts: int = 3) -> Any:
    """A one-node Ray cluster on this machine (2 CPUs, a 200 MB object store, no dashboard).

    The agents' ports are given: left to pick their own, they report them through files that the raylet
    waits 20 s for. Even so, on the loaded 2-core development machine the raylet sometimes gave up waiting
    for the dashboard agent (a Python process importing a web stack) and Ray raised "The current node timed
    out during startup"; a start is then tried again after removing what the failed one left running.
    """
    import psutil
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        ports = {name: _free_port() for name in ("metrics_agent_port", "metrics_export_port",
                                                  "dashboard_agent_listen_port", "runtime_env_agent_port")}  # fmt: skip
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            return Cluster(initialize_head=True, head_node_args={
                "num_cpus": 2, "object_store_memory": 200 << 20, "include_dashboard": False, **ports})  # fmt: skip
        except Exception:
            for proc in psutil.Process().children(recursive=True):
                if proc.pid not in before:  # only the processes this failed start launched, by pid
                    proc.kill()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")




def two_nodes(node_env: list[dict[str, str]] | None = None) -> Any:
    """A started two-node Ray cluster on loopback (1 CPU each, Ray's own raylets), stopped by process id on exit."""
    from autotune.engine.ray_local import LoopbackCluster

    return LoopbackCluster(nodes=2, cpus=1, node_env=node_env).start()
