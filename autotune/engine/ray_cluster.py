"""The Ray cluster the Ray engine runs on: joining (or starting) Ray, and sizing each node's actor pools.

Ray is imported lazily: without it installed, asking for the Ray engine is one line naming the extra. Each
node's actors are sized by the caller's sizer (a retrieval's: the profile of that node's machine id, or the safe
default and a warning naming it), fitted to the CPUs Ray gives the node, and their CPU reservations scaled so
that preprocessing tasks always fit beside them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.engine.config import EngineConfig, logical_cores
from autotune.engine.ray_stages import node_machine_id
from autotune.errors import ConfigError, one_line

RAY_EXTRA = 'the Ray engine needs Ray: pip install "clip-autotune[ray]" (ray[data] >= 2.40)'
# A Ray started here for one run: small, private and quiet. The object store holds a few batches of pixels
# in flight (150 KB an image); Ray's default (30% of RAM in /dev/shm) is far more than a scan needs.
LOCAL_OBJECT_STORE_MB = 512
ENGINES = ("local", "ray")


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a :class:`ConfigError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine's data layer; an install without the [data] extra lacks it)
    except ImportError:
        raise ConfigError(RAY_EXTRA) from None
    return ray


@dataclass(frozen=True)
class RayConnection:
    """A Ray session this process joined: whether it started Ray itself, and how long that took."""

    address: str
    started_here: bool
    startup_s: float


def connect(
    address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int | None = None
) -> RayConnection:
    """Join the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``), or start a private one (None).

    A process already connected keeps its session (``started_here`` False: the caller must not shut it
    down). A Ray started here listens on 127.0.0.1 only, with no dashboard and a small object store.

    Example:
        >>> conn = connect(None, num_cpus=2)  # doctest: +SKIP
        >>> conn.startup_s  # doctest: +SKIP
        2.1
    """
    if address is None and "ray" not in sys.modules:
        # Ray binds a local head to this machine's outward address unless it believes clusters are off; a
        # private Ray for one run has no reason to be reachable from anywhere else.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if ray.is_initialized():
        return RayConnection(address or "current", False, 0.0)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        kwargs.update(
            num_cpus=num_cpus or logical_cores(), object_store_memory=(object_store_mb or LOCAL_OBJECT_STORE_MB) << 20
        )
    try:
        # "local" always starts a new Ray: with None, Ray would join the last cluster started on this machine.
        ray.init(address=address or "local", **kwargs)
    except Exception as exc:  # Ray raises a bare Exception when its node times out starting up
        where = f"the Ray cluster at {address}" if address else "a Ray on this machine"
        raise ConfigError(f"cannot start or join {where}: {one_line(exc)}") from None
    _quiet_ray_data()
    return RayConnection(address or "local", True, time.perf_counter() - t0)


def _quiet_ray_data() -> None:
    """No progress bars or execution banners from Ray Data: the project's own bar reports the scan."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    # Ray Data logs the failure of a branch whose node was lost, traceback and all, before the driver plans the
    # rest again on the other nodes: an error that propagates is raised to the driver anyway.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class NodePlan:
    """One node of the cluster: its address, machine id, resources, and the configuration that sizes it."""

    address: str  # IP:port of its raylet (two raylets on one host share the IP)
    machine_id: str
    cpus: int
    gpus: int
    config: EngineConfig
    profile: str | None  # the profile id it came from; None for the safe default or the run's own config
    node_id: str = ""  # Ray's id of the node: what its actors and tasks are pinned to


@dataclass(frozen=True)
class NodeFacts:
    """What a node says of itself: address, Ray id, machine id, its host's cores, the CPUs and GPUs Ray gives it,
    and what the sizer's ``probe`` returned there (e.g. the profile in use on that machine)."""

    address: str
    node_id: str
    machine_id: str
    host_cores: int
    cpus: int
    gpus: int
    local: Any = None


@dataclass(frozen=True)
class NodeSizer:
    """How a scan sizes each node: ``size`` on the driver (facts -> configuration and the profile id it came
    from), from the facts the node reported, ``probe``'s result among them.

    ``probe`` runs on every node (a top-level function or a partial of one, so that Ray pickles it by
    reference): it reads what only the node has, such as the profile its own machine keeps in use.
    """

    size: Callable[[NodeFacts], tuple[EngineConfig, str | None]]
    probe: Callable[[], Any] | None = None


def fit_to_cpus(config: EngineConfig, cpus: int, host_cores: int) -> EngineConfig:
    """``config`` for a node that Ray gives ``cpus`` of its host's ``host_cores``: its replicas and producers
    scaled by that share (at least one each), threads at most ``cpus``. A 1-CPU raylet on a 2-core host never
    runs the 2-core layout its machine id's profile describes; a node given its whole host runs it unchanged.

    Example:
        >>> cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=19)
        >>> fit_to_cpus(cfg, 1, 2).cpu_models, fit_to_cpus(cfg, 2, 2) is cfg
        (1, True)
    """
    if cpus <= 0 or host_cores <= 0 or cpus >= host_cores:
        return config
    share = cpus / host_cores
    return dataclasses.replace(
        config,
        producers=max(1, round(config.producers * share)),
        cpu_models=max(1, round(config.cpu_models * share)) if config.cpu_models else 0,
        cpu_threads=max(1, min(config.cpu_threads, cpus)),
    )


def alive_nodes() -> list[dict[str, Any]]:
    """Ray's records of the nodes alive now."""
    return [n for n in import_ray().nodes() if n.get("Alive")]


def plan_nodes(config: EngineConfig, *, sizer: NodeSizer | None = None) -> list[NodePlan]:
    """Size every alive node: by ``sizer`` from the facts it reports, or with ``config`` where there is none;
    either way fitted to the CPUs Ray gives the node (:func:`fit_to_cpus`).

    The engine knows no profiles: the caller (a retrieval) hands in the sizer that looks up each machine's
    profile, so the layers stay in one direction. ``config`` alone sizes every node in benchmarks that compare
    engines on one configuration.
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in alive_nodes() if n["Resources"].get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(node_machine_id)
    local = sizer.probe if sizer is not None else None
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(local)
        for n in nodes
    ]
    facts = ray.get(refs, timeout=300)
    plans = []
    for node, fact in zip(nodes, facts, strict=True):
        about = NodeFacts(
            address=f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}", node_id=str(node["NodeID"]),
            machine_id=str(fact["machine_id"]), host_cores=int(fact["cores"]),
            cpus=int(node["Resources"].get("CPU", 0)), gpus=int(node["Resources"].get("GPU", 0)),
            local=fact.get("local"),
        )  # fmt: skip
        cfg, pid = sizer.size(about) if sizer is not None else (config, None)
        cfg = fit_to_cpus(cfg, about.cpus, about.host_cores)
        plans.append(NodePlan(about.address, about.machine_id, about.cpus, about.gpus, cfg, pid, about.node_id))
    return plans


#: Images per Ray Data block, about (whole batches). The driver's Ray Data executor spends about 33 ms of CPU per
#: block (2-core Xeon, fake model, 1,000 images: blocks of one 26-image batch cost the driver 2.0-2.7 CPU-s,
#: blocks of four 0.75-0.9), so one-batch blocks made the driver the busiest process after the actors.
BLOCK_MIN_IMAGES = 100
#: Batches per block where GPU actors run: at 33 ms a block, blocks of one 128-image batch would cap one driver
#: near 3,900 images/s, under one GPU node's rate; blocks of 8 batches put that cap near 31,000.
GPU_BLOCK_BATCHES = 8


@dataclass(frozen=True)
class RayLayout:
    """A node's pools (the scan makes one layout per node): preprocessing tasks, and one actor pool per device
    type. Laid out over several nodes, Ray Data would give every actor of a pool the same shape: the pools then
    have the sum of the nodes' replicas and the smallest shape asked for (threads, batch), which fits each.
    """

    preprocess_tasks: int
    cpu_actors: int
    cpu_threads: int
    cpu_batch: int
    gpu_actors: int
    gpu_batch: int
    gpus_per_actor: float
    # Ray's CPU requests are reservations: a profile that shares the cores between producers and replicas (2
    # replicas x 1 thread + 1 producer on 2 cores) would otherwise reserve every CPU for the actors and leave
    # the preprocessing tasks unscheduled forever. Both requests are scaled by this share (<= 1) so that they
    # fit the cluster's CPUs and time-share them, as the local engine's processes do.
    cpu_share: float = 1.0
    # Preprocessing inside the CPU actors instead of tasks of its own: see layout_for.
    fused: bool = False

    def describe(self) -> str:
        """E.g. ``2 preprocess tasks, 3 cpu actors x 2 threads (batch 32)``."""
        tasks = f"{self.preprocess_tasks} preprocess task{'s' if self.preprocess_tasks != 1 else ''}"
        parts = [] if self.fused else [tasks]
        if self.cpu_actors:
            parts.append(f"{self.cpu_actors} cpu actor{'s' if self.cpu_actors != 1 else ''} x {self.cpu_threads} "
                         f"thread{'s' if self.cpu_threads != 1 else ''} (batch {self.cpu_batch}"
                         f"{', preprocessing inside' if self.fused else ''})")  # fmt: skip
        if self.gpu_actors:
            parts.append(f"{self.gpu_actors} gpu actors (batch {self.gpu_batch}, {self.gpus_per_actor:g} gpu each)")
        return ", ".join(parts)

    def unit_batch(self) -> int:
        """The smallest batch of any pool: a Ray Data block is a whole number of them."""
        return min([b for b, n in ((self.cpu_batch, self.cpu_actors), (self.gpu_batch, self.gpu_actors)) if n])

    def block_rows(self, records: int) -> int:
        """Records per Ray Data block (one preprocessing task): whole batches, about :data:`BLOCK_MIN_IMAGES`
        (:data:`GPU_BLOCK_BATCHES` batches with GPU actors).

        Fewer, larger blocks cost the driver less (its Ray Data executor spends tens of milliseconds of CPU per
        block); a small scan still gets at least 4 blocks per actor, so the pools stay balanced to its end.

        Example:
            >>> layout = RayLayout(1, 2, 1, 26, 0, 128, 1.0)  # 2 cpu actors, batch 26
            >>> layout.block_rows(2000), layout.block_rows(200)
            (104, 26)
        """
        unit = self.unit_batch()
        balanced = records // (4 * max(1, self.cpu_actors + self.gpu_actors)) // unit * unit
        batches = max(math.ceil(BLOCK_MIN_IMAGES / unit), GPU_BLOCK_BATCHES if self.gpu_actors else 1)
        return max(unit, min(batches * unit, balanced))


def layout_for(nodes: Sequence[NodePlan]) -> RayLayout:
    """The pools of one node's plan, or of several added up (a node's GPU replicas only where it has GPUs)."""
    cpu = [n.config for n in nodes if n.config.cpu_models]
    gpu = [(n.config, n.gpus) for n in nodes if n.config.gpu_models and n.gpus]
    if not cpu and not gpu:
        raise ConfigError("no Ray node can run a model replica (no CPU replica planned and no GPU visible)")
    preprocess = sum(n.config.producers for n in nodes)
    cpu_actors, cpu_threads = sum(c.cpu_models for c in cpu), min((c.cpu_threads for c in cpu), default=1)
    gpu_actors = sum(c.gpu_models * g for c, g in gpu)
    asked = preprocess + cpu_actors * cpu_threads + gpu_actors  # a GPU actor reserves one CPU to feed it
    cpus = sum(n.cpus for n in nodes)
    # Profiles that time-share the cores between producers and one-thread replicas (1 producer + 2 x 1 on 2
    # cores) fold the preprocessing into the CPU actors: one process per core instead of three, no pixels
    # through the object store, half the blocks for the driver's executor. Measured on 2 cores, ViT-B/32
    # openvino-int8, 2,000 images, interleaved with the local engine: 0.84 of it against 0.76 with tasks. With
    # several threads per replica a fused actor would leave all but one idle while it decodes, and GPU actors
    # need their CPU to feed the GPU: both keep the tasks.
    fused = bool(cpu_actors) and not gpu_actors and cpu_threads == 1 and asked > cpus
    if fused:
        asked = cpu_actors
    return RayLayout(
        preprocess_tasks=preprocess,
        cpu_actors=cpu_actors,
        cpu_threads=cpu_threads,
        cpu_batch=min((c.cpu_batch for c in cpu), default=32),
        gpu_actors=gpu_actors,
        gpu_batch=min((c.gpu_batch for c, _g in gpu), default=128),
        gpus_per_actor=min((1.0 / c.gpu_models for c, _g in gpu), default=1.0),
        cpu_share=min(1.0, cpus / asked) if asked and cpus else 1.0,
        fused=fused,
    )
