"""The Ray engine: the same scan as :func:`autotune.engine.runner.run_scan`, on a Ray cluster.

Ray Data carries the project's own records (the ids and locators the local engine scans) as blocks of one
batch each; CPU tasks read and preprocess them (:func:`~autotune.engine.ray_stages.preprocess_batch`), and
actor pools per device type run the image tower (:class:`~autotune.engine.ray_stages.EmbedActor`), sized from
the profile of each node's machine. Embeddings come back to the driver, which keeps the books, the exact
top-k and the embedding sink itself: the index is written through the same shard code as the local engine,
so no filesystem is shared with the workers and a killed run resumes from the shards the driver committed.
A killed actor is restarted by Ray and its batches redone (Ray Data's actor pools retry by default); the
driver keeps the first copy of any id it receives twice, and the scan ends with the same exactly-once check
as the local engine.

Ray is imported lazily: without it installed, asking for this engine is one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.data.sources import ImageSource, Record
from autotune.engine.config import EngineConfig, logical_cores, safe_default_for
from autotune.engine.consumer import EmbeddingSink
from autotune.engine.ray_stages import KILL_FLAG_ENV, EmbedActor, node_machine_id, preprocess_batch
from autotune.engine.result import ScanProgress, ScanResult, check_accounting
from autotune.engine.runner import _query_matrix, _scan_records, preprocess_spec_for
from autotune.engine.sink import ShardSinkFactory
from autotune.engine.telemetry import steady_state
from autotune.engine.topk import RunningTopK
from autotune.errors import ConfigError, one_line
from autotune.models.backends import BackendSpec
from autotune.models.calibration import config_calibration
from autotune.progress import Log, ProgressFactory, Task, quiet

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
    logging.getLogger("ray.data").setLevel(logging.ERROR)


@dataclass(frozen=True)
class NodePlan:
    """One node of the cluster: its address, machine id, resources, and the configuration that sizes it."""

    address: str
    machine_id: str
    cpus: int
    gpus: int
    config: EngineConfig
    profile: str | None  # the profile id it came from; None for the safe default or the run's own config


def plan_nodes(
    model_id: str, config: EngineConfig, *, per_node_profiles: bool = True, log: Log | None = None
) -> list[NodePlan]:
    """Size every alive node: from the profile in use for its machine id and the model's architecture.

    A node with no such profile gets the safe default for its cores, and ``log`` hears one warning naming it.
    ``per_node_profiles=False`` sizes every node with ``config`` (benchmarks compare engines that way).
    The backend and precision always come from ``config``: they decide the embeddings, hence the index key,
    so a node whose profile tuned another backend runs its layout with the run's backend (and says so).
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    say = log or quiet
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(node_machine_id)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    facts = ray.get(refs, timeout=300)
    arch = None
    if per_node_profiles:
        from autotune.tuner.profile import arch_short, current_profile, model_arch

        arch = model_arch(model_id)
    plans = []
    for node, fact in zip(nodes, facts, strict=True):
        addr, mid = str(node["NodeManagerAddress"]), str(fact["machine_id"])
        cpus, gpus = int(node["Resources"].get("CPU", 0)), int(node["Resources"].get("GPU", 0))
        cfg, pid = config, None
        if arch is not None:
            prof = current_profile(mid, arch)
            if prof is None:
                cfg = safe_default_for(max(cpus, 1))
                say(f"warning: Ray node {addr} (machine {mid}) has no profile for {arch_short(arch)}: "
                    f"safe default ({cfg.describe()})")  # fmt: skip
            else:
                cfg, pid = prof.config, prof.id
                if cfg.cpu_models and cfg.cpu_backend != config.cpu_backend:
                    say(f"note: Ray node {addr} was tuned on {cfg.cpu_backend}; it runs {config.cpu_backend}, "
                        "the backend this index is keyed on, with its tuned layout")  # fmt: skip
        plans.append(NodePlan(addr, mid, cpus, gpus, cfg, pid))
    return plans


@dataclass(frozen=True)
class RayLayout:
    """The cluster-wide pools: preprocessing tasks, and one actor pool per device type.

    Ray Data gives every actor of a pool the same shape, so per-node profiles set how many actors each pool
    has (their sum) and the shape is the smallest one asked for (threads, batch), which fits every node.
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

    def describe(self) -> str:
        """E.g. ``2 preprocess tasks, 3 cpu actors x 2 threads (batch 32)``."""
        parts = [f"{self.preprocess_tasks} preprocess task{'s' if self.preprocess_tasks != 1 else ''}"]
        if self.cpu_actors:
            parts.append(f"{self.cpu_actors} cpu actor{'s' if self.cpu_actors != 1 else ''} x {self.cpu_threads} "
                         f"thread{'s' if self.cpu_threads != 1 else ''} (batch {self.cpu_batch})")  # fmt: skip
        if self.gpu_actors:
            parts.append(f"{self.gpu_actors} gpu actors (batch {self.gpu_batch}, {self.gpus_per_actor:g} gpu each)")
        return ", ".join(parts)

    def unit_batch(self) -> int:
        """Records per Ray Data block: the smallest batch of any pool, so each block is one actor call."""
        return min([b for b, n in ((self.cpu_batch, self.cpu_actors), (self.gpu_batch, self.gpu_actors)) if n])


def layout_for(nodes: Sequence[NodePlan]) -> RayLayout:
    """Add the nodes' plans up into the cluster's pools (a node's GPU replicas only where it has GPUs)."""
    cpu = [n.config for n in nodes if n.config.cpu_models]
    gpu = [(n.config, n.gpus) for n in nodes if n.config.gpu_models and n.gpus]
    if not cpu and not gpu:
        raise ConfigError("no Ray node can run a model replica (no CPU replica planned and no GPU visible)")
    preprocess = sum(n.config.producers for n in nodes)
    cpu_actors, cpu_threads = sum(c.cpu_models for c in cpu), min((c.cpu_threads for c in cpu), default=1)
    gpu_actors = sum(c.gpu_models * g for c, g in gpu)
    asked = preprocess + cpu_actors * cpu_threads + gpu_actors  # a GPU actor reserves one CPU to feed it
    cpus = sum(n.cpus for n in nodes)
    return RayLayout(
        preprocess_tasks=preprocess,
        cpu_actors=cpu_actors,
        cpu_threads=cpu_threads,
        cpu_batch=min((c.cpu_batch for c in cpu), default=32),
        gpu_actors=gpu_actors,
        gpu_batch=min((c.gpu_batch for c, _g in gpu), default=128),
        gpus_per_actor=min((1.0 / c.gpu_models for c, _g in gpu), default=1.0),
        cpu_share=min(1.0, cpus / asked) if asked and cpus else 1.0,
    )


def _dataset(recs: Sequence[Record], rows: int) -> Any:
    """The records as a Ray dataset of id/locator blocks of ``rows`` records (a block is a preprocessing task)."""
    import pyarrow as pa
    import ray.data

    table = pa.table({"id": np.array([r.id for r in recs], np.int64), "locator": [r.locator for r in recs]})
    return ray.data.from_arrow([table.slice(i, rows) for i in range(0, len(recs), rows)])


def _embedded(
    ds: Any, layout: RayLayout, backend: BackendSpec, threads: int, device: str, kill_flag: str | None
) -> Any:
    """Append one device type's actor pool to ``ds`` (Ray restarts a dead actor and retries its batch)."""
    import ray.data

    gpu = device == "gpu"
    spec = BackendSpec(
        model_id=backend.model_id, device="cuda:0" if gpu else "cpu", precision=backend.precision if gpu else "fp32",
        backend="eager" if gpu else backend.backend, fake_delay_s=backend.fake_delay_s,
        batch=layout.gpu_batch if gpu else layout.cpu_batch, calibration=None if gpu else backend.calibration,
    )  # fmt: skip
    return ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"backend": spec, "threads": 1 if gpu else threads, "kill_flag": kill_flag},
        batch_size=spec.batch,
        compute=ray.data.ActorPoolStrategy(size=layout.gpu_actors if gpu else layout.cpu_actors),
        num_cpus=layout.cpu_share * (1 if gpu else threads),
        num_gpus=layout.gpus_per_actor if gpu else 0,
        batch_format="numpy",
        zero_copy_batch=True,
    )


def _pipeline(
    source: ImageSource, recs: Sequence[Record], model_id: str, config: EngineConfig, layout: RayLayout,
    fake_delay_s: float, calibration: str | None,
) -> Any:  # fmt: skip
    """Records -> preprocessing tasks -> actor pools (CPU and GPU pools each take a static share of the records)."""
    import ray.data

    pre = preprocess_spec_for(model_id)
    backend = BackendSpec(model_id=model_id, precision=config.gpu_precision, backend=config.cpu_backend,
                          fake_delay_s=fake_delay_s, calibration=calibration)  # fmt: skip
    kill_flag = os.environ.get(KILL_FLAG_ENV) or None
    pools = [(d, n, b) for d, n, b in (("cpu", layout.cpu_actors, layout.cpu_batch),
                                        ("gpu", layout.gpu_actors, layout.gpu_batch)) if n]  # fmt: skip
    # With both pools, each gets a share of the records in proportion to actors x batch: a static split, as
    # the local engine's static scheduling; with one pool (the usual case) it takes everything.
    weights = np.array([n * b for _d, n, b in pools], float)
    cuts = np.concatenate([[0], np.round(np.cumsum(weights) / weights.sum() * len(recs))]).astype(int)
    parts = []
    for (device, _n, _b), lo, hi in zip(pools, cuts[:-1], cuts[1:], strict=True):
        if hi <= lo:
            continue
        ds = _dataset(recs[lo:hi], layout.unit_batch())
        ds = ds.map_batches(
            preprocess_batch, fn_kwargs={"source": source, "spec": pre}, batch_size=None, num_cpus=layout.cpu_share,
            compute=ray.data.TaskPoolStrategy(size=max(1, layout.preprocess_tasks)), batch_format="numpy",
            # The memory a task holds (its batch of pixels, twice over while decoding) is also what keeps Ray
            # Data from fusing this stage into the actors, which it does to stages of equal remote arguments:
            # decode and the model would then take turns in one process instead of overlapping on two cores.
            memory=2 * layout.unit_batch() * pre.crop * pre.crop * 3,
        )  # fmt: skip
        parts.append(_embedded(ds, layout, backend, layout.cpu_threads, device, kill_flag))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


class _RayBooks:
    """The driver's running account of a Ray scan: what came back, what was skipped, what arrived twice.

    Ids already received are kept in a bitmap over the requested ids (50 MB for 50 million records): a set
    of Python ints costs about 20 times that, and its per-id updates dominated the driver's time per batch.
    """

    def __init__(self, start: float, requested: Sequence[int]) -> None:
        """Empty books for a scan of the ``requested`` ids that started at ``start`` (``time.time()``)."""
        self.start = start
        self.images = 0
        self.duplicates = 0
        self.driver_s = 0.0  # the driver's own time per batch: bookkeeping, top-k, shard writes
        self._seen = np.zeros(max(requested, default=-1) + 1, bool)
        self.skipped: list[dict[str, Any]] = []
        self.embedded: list[np.ndarray] = []
        self.received: list[tuple[float, int, int]] = []  # (driver time.time(), images, actor pid)
        self.actors: dict[int, dict[str, Any]] = {}  # pid -> node, ready_t, images, busy_s

    @property
    def accounted(self) -> int:
        """Records embedded or skipped so far."""
        return self.images + len(self.skipped)

    def take(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Book one batch from the pool; return the (ids, embeddings) seen for the first time."""
        ids = np.asarray(batch["id"], np.int64)
        known = (ids >= 0) & (ids < len(self._seen))
        fresh = np.ones(len(ids), bool)  # an id never requested passes, and fails the final accounting
        fresh[known] = ~self._seen[ids[known]]
        self._seen[ids[known & fresh]] = True
        self.duplicates += int((~fresh).sum())
        readable = np.asarray(batch["ok"], bool)
        ok = readable & fresh
        for row in np.flatnonzero(~readable & fresh):
            self.skipped.append({"id": int(ids[row]), "locator": str(batch["locator"][row]),
                                 "reason": str(batch["reason"][row]), "detail": str(batch["detail"][row])})  # fmt: skip
        self.images += int(ok.sum())
        self.embedded.append(ids[ok])
        now = time.time()
        for pid in np.unique(batch["pid"]):
            rows = batch["pid"] == pid
            actor = self.actors.setdefault(
                int(pid), {"node": str(batch["node"][rows][0]), "ready_t": float(batch["ready_t"][rows][0]),
                           "images": 0, "busy_s": 0.0})  # fmt: skip
            actor["images"] += int((rows & ok).sum())
            actor["busy_s"] += float(batch["busy_s"][rows].sum())
            self.received.append((now, int((rows & ok).sum()), int(pid)))
        return ids[ok], np.asarray(batch["embedding"])[ok]


def _progress_info(done: int, total: int, elapsed: float) -> str:
    """``'123.4 img/s, ETA 12 s'`` for the bar."""
    if elapsed <= 0 or done <= 0:
        return ""
    rate = done / elapsed
    return f"{rate:,.1f} img/s, ETA {math.ceil((total - done) / rate)} s"


def run_scan_ray(
    source: ImageSource,
    model_id: str,
    config: EngineConfig,
    *,
    queries: np.ndarray | None = None,
    top_k: int = 9,
    records: Sequence[Record] | None = None,
    sink_factory: Callable[[int], EmbeddingSink] | None = None,
    progress: ProgressFactory | None = None,
    on_batch: Callable[[ScanProgress], None] | None = None,
    fake_delay_s: float = 0.0,
    calibration: str | None = None,
    address: str | None = None,
    per_node_profiles: bool = True,
    log: Log | None = None,
) -> ScanResult:
    """Scan ``records`` (default: every record of ``source``) on a Ray cluster; same result as :func:`run_scan`.

    ``address`` is ``auto`` or ``HOST:PORT`` of a running cluster, or None to start a private Ray on this
    machine for the run (a process already connected keeps its session). Each node's pools are sized from
    its own profile (``per_node_profiles``; a node with none gets the safe default and a warning on ``log``),
    with ``config``'s backend. The driver writes what ``sink_factory(n)`` opens (``n`` unique per run),
    merges the exact top-k, skips unreadable images with their reasons and checks that every record was
    embedded or skipped exactly once. ``scan_seconds`` and images/s run from the call, the actors' start-up
    included (preprocessing runs ahead while they load, so no later start is fair); ``startup_s`` is when the
    last actor had loaded; the Ray start-up itself is apart (``workers[0]['stats']['ray_startup_s']``).

    Example:
        >>> q = embed_queries("synthetic:tiny", ["a photo of Felis catus"])
        >>> res = run_scan_ray(open_source("data/"), "synthetic:tiny", EngineConfig(), queries=q)  # doctest: +SKIP
        >>> res.hits(0)[:3]  # doctest: +SKIP
    """
    config.validate(cores=10**6, gpus=10**6)  # the driver's cores and GPUs are not the cluster's
    recs = _scan_records(source, records)
    q = _query_matrix(queries)
    conn = connect(address)
    task: Task | None = None
    sink: EmbeddingSink | None = None
    batches: Any = None
    try:
        wall0, t0 = time.time(), time.perf_counter()
        layout = layout_for(plan_nodes(model_id, config, per_node_profiles=per_node_profiles, log=log))
        ds = _pipeline(source, recs, model_id, config, layout, fake_delay_s,
                       calibration or config_calibration(source, model_id, config))  # fmt: skip
        # Shard names carry the writer's consumer number and pid: the local engine's replicas are new processes
        # every run, this driver may not be (a library caller scanning twice), so its number is the run's start
        # time in microseconds, or a resumed scan in the same process would overwrite the shards it resumes from.
        sink = sink_factory(time.time_ns() // 1000) if sink_factory is not None else None
        topk = RunningTopK(len(q), top_k)
        books = _RayBooks(wall0, [r.id for r in recs])
        task = progress("scan", len(recs)) if progress is not None else None
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
        for batch in batches:
            t_batch = time.perf_counter()
            ids, emb = books.take(batch)
            if len(ids):
                topk.update(q @ emb.T if len(q) else np.zeros((0, len(ids))), ids)
                if sink is not None:
                    sink.write(ids, emb)
            books.driver_s += time.perf_counter() - t_batch
            elapsed = time.perf_counter() - t0
            if task is not None:
                task.update(books.accounted, _progress_info(books.accounted, len(recs), elapsed))
            if on_batch is not None:
                on_batch(ScanProgress(books.images, len(recs), elapsed, []))
        if sink is not None:
            sink.close()
        end = time.time()
        return _result(books, config, layout, conn, [r.id for r in recs], topk, len(q), end)
    finally:
        if batches is not None and hasattr(batches, "close"):
            # A scan stopped early (Ctrl-C, a failure in the driver) stops its executor now, so its actors
            # give their CPUs back before the next scan asks for them.
            batches.close()
        if task is not None:
            task.close()
        if isinstance(sink_factory, ShardSinkFactory):
            sink_factory.remove_leftovers()
        if conn.started_here:
            import_ray().shutdown()


def _result(
    books: _RayBooks, config: EngineConfig, layout: RayLayout, conn: RayConnection, requested: list[int],
    topk: RunningTopK, queries: int, end: float,
) -> ScanResult:  # fmt: skip
    """Check the accounting and add the figures up; the scan clock starts once every actor was ready."""
    check_accounting(requested, books.embedded, [s["id"] for s in books.skipped])
    # The scan is timed from the call, start-up included. The local engine's producers wait until every
    # replica has loaded, so its clock can start then; Ray Data's preprocessing tasks run ahead while the actors
    # load (into the object store), and a clock started when the actors were ready counted that work for free:
    # it read 3.7 times the local rate on 200 images. The actors' start-up is still reported (startup_s).
    t_go = min(max([a["ready_t"] for a in books.actors.values()] + [books.start]), end)
    scan_seconds = end - books.start
    pids = {pid: i for i, pid in enumerate(sorted(books.actors))}
    log = [(t - books.start, n, pids[pid]) for t, n, pid in books.received]
    steady, _warm = steady_state(log, len(pids))
    workers = [
        {"role": "consumer", "index": pids[pid], "pid": pid, "affinity": None,
         "stats": {**a, "ready_s": round(a["ready_t"] - books.start, 3)}}
        for pid, a in sorted(books.actors.items())
    ]  # fmt: skip
    workers.insert(0, {"role": "driver", "index": 0, "pid": os.getpid(), "affinity": None,
                       "stats": {"ray_startup_s": round(conn.startup_s, 3), "ray_address": conn.address,
                                 "layout": layout.describe(), "duplicates_dropped": books.duplicates,
                                 "driver_s": round(books.driver_s, 3)}})  # fmt: skip
    busy = sum(a["busy_s"] for a in books.actors.values())
    loaded = end - t_go  # the actors' busy share counts from when the last of them was ready
    share = busy / (len(pids) * loaded) if pids and loaded > 0 else 0.0
    k_scores, k_ids = topk.result() if queries else (np.zeros((0, 0)), np.zeros((0, 0), int))
    return ScanResult(
        config=config,
        total_records=len(requested),
        images=books.images,
        skipped=sorted(books.skipped, key=lambda s: s["id"]),
        seconds=end - books.start,
        startup_s=t_go - books.start,
        scan_seconds=scan_seconds,
        images_per_s=books.images / scan_seconds if scan_seconds > 0 else 0.0,
        steady_images_per_s=steady,
        topk_scores=k_scores,
        topk_ids=k_ids,
        workers=workers,
        bottleneck=(f"model actors (busy {share:.0%} since they loaded)" if share >= 0.8
                    else f"preprocessing or transfer (model actors busy {share:.0%} since they loaded)"),  # fmt: skip
        batch_log=log,
    )
