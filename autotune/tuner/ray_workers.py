"""`autotune study --engine ray`: the study's worker loop on every node of a Ray cluster, one trial per node.

Each alive node gets one Ray task that reserves the whole node (all its CPUs, and its GPUs) and runs the same
worker loop as `autotune study` on one machine (:func:`~autotune.tuner.study.run_study`) against the shared
storage: a trial owns its node. Nodes are grouped by machine id (the hardware fingerprint, asked of each node
itself): the default study name carries the machine id, so each group of identical nodes shares one study and
one worker per group validates and saves its pick: one profile per machine id. Ray is imported only here.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import AutotuneError, ConfigError, one_line
from autotune.progress import Log, quiet
from autotune.tuner.options import StudyOptions

__all__ = ["RayNode", "RayStudyOutcome", "ray_nodes", "run_ray_study"]


@dataclass(frozen=True)
class RayNode:
    """An alive node of the cluster: its Ray id, address, whole-node resources and machine id."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    machine_id: str


@dataclass
class RayStudyOutcome:
    """Every node's study summary, and per machine id the summary of the worker that validated its pick."""

    nodes: list[RayNode]
    workers: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Figures for tables and JSON: node counts, then per machine id its validated pick."""
        picks = {w["machine_id"]: w for w in self.workers if w.get("validated_by") == w.get("worker")}
        out: dict[str, Any] = {
            "engine": "ray",
            "nodes": len(self.nodes),
            "machine_ids": len({n.machine_id for n in self.nodes}),
        }
        for machine_id, pick in sorted(picks.items()):
            out[f"{machine_id}.images_per_s"] = pick.get("images_per_s")
            out[f"{machine_id}.validated_by"] = pick.get("validated_by")
            out[f"{machine_id}.profile"] = pick.get("profile")
        out["workers"] = self.workers
        return out


def _machine_id() -> str:
    """This node's machine id (runs inside a Ray task pinned to the node)."""
    from autotune.machine import detect_machine

    return detect_machine().machine_id


def _study_worker(options: dict[str, Any], node: str) -> dict[str, Any]:
    """One node's worker: the study's loop on this node, its lines on stderr (Ray forwards them to the driver)."""
    from autotune.machine import detect_machine
    from autotune.tuner.study import run_study

    def say(line: str) -> None:
        """A log line naming the node."""
        print(f"[{node}] {line}", file=sys.stderr, flush=True)

    outcome = run_study(StudyOptions(**options), log=say)
    return {"node": node, "machine_id": detect_machine().machine_id, **outcome.summary()}


def _pinned(node_id: str) -> Any:
    """A scheduling strategy that runs a task on that node and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def ray_nodes() -> list[RayNode]:
    """The cluster's alive nodes with CPUs, each with the machine id it reports itself."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(_machine_id)
    ids = ray.get([probe.options(scheduling_strategy=_pinned(n["NodeID"])).remote() for n in alive])
    return [
        RayNode(
            node_id=n["NodeID"],
            # IP and port: two raylets of one host share the IP.
            address=f"{n.get('NodeManagerAddress', '')}:{n.get('NodeManagerPort', '')}",
            cpus=float(n["Resources"]["CPU"]),
            gpus=float(n["Resources"].get("GPU", 0)),
            machine_id=str(machine_id),
        )
        for n, machine_id in zip(alive, ids, strict=True)
    ]


def run_ray_study(options: StudyOptions, address: str | None = None, log: Log | None = None) -> RayStudyOutcome:
    """Run the study on every node of a Ray cluster: one worker per node, the node reserved whole.

    ``options.storage`` must be a storage every node reaches (PostgreSQL for several hosts; a SQLite file only
    when every node is on this host). Joins the running Ray instance, else the cluster at ``address``
    (``"auto"``: the one this machine belongs to; ``"local"`` or None: a new one on this machine). Nodes with
    the same machine id share a study (the default study name carries it) and split its ``options.trials``
    between them; one worker per machine id validates and saves the pick.

    Example:
        >>> out = run_ray_study(StudyOptions(trials=40, storage="postgresql+psycopg://db/autotune"), "auto")
        >>> out.summary()["machine_ids"]  # doctest: +SKIP
        1
    """
    say = log or quiet
    if not options.storage:
        raise ConfigError("--engine ray needs --storage: a database every node reaches (postgresql://...)")
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'ray[data]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    nodes = ray_nodes()
    if not nodes:
        raise ConfigError("the Ray cluster has no alive node with CPUs")
    groups: dict[str, list[RayNode]] = {}
    for node in nodes:
        groups.setdefault(node.machine_id, []).append(node)
    if options.study_name is not None and len(groups) > 1:
        raise ConfigError(
            f"the cluster holds {len(groups)} machine ids, one study each: leave out --study-name (it names one)"
        )
    for machine_id, members in sorted(groups.items()):
        say(f"ray: {len(members)} node(s) of machine id {machine_id}: {', '.join(n.address for n in members)}")
    worker = ray.remote(_study_worker)
    fields = dataclasses.asdict(options)
    futures = [
        worker.options(num_cpus=node.cpus, num_gpus=node.gpus, scheduling_strategy=_pinned(node.node_id)).remote(
            fields, node.address or node.node_id[:8]
        )
        for node in nodes
    ]
    try:
        results = ray.get(futures)
    except ray.exceptions.RayTaskError as exc:
        # A user mistake inside a node's worker (a dataset missing there, a bad space) stays one line.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AutotuneError):
            raise cause from None
        raise
    outcome = RayStudyOutcome(nodes=nodes, workers=list(results))
    for w in outcome.workers:
        if w.get("validated_by") == w.get("worker"):
            say(f"ray: machine id {w['machine_id']}: pick validated and saved by {w['worker']} on {w['node']}")
    return outcome
