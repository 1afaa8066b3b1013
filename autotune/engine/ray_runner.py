"""The Ray engine: the same scan as :func:`autotune.engine.runner.run_scan`, on a Ray cluster.

Ray Data carries the project's own records (the ids and locators the local engine scans) as blocks of whole
batches; on each node, in a branch of the pipeline pinned to it and sized from the profile of its machine, CPU
tasks read and preprocess them (:func:`~autotune.engine.ray_stages.preprocess_batch`) and actor pools per device
type run the image tower (:class:`~autotune.engine.ray_stages.EmbedActor`). A node lost mid-scan has the records
not yet back planned again on the nodes left. Embeddings come back to the driver, which keeps the books, the exact
top-k and the embedding sink itself: the index is written through the same shard code as the local engine,
so no filesystem is shared with the workers and a killed run resumes from the shards the driver committed.
A killed actor is restarted by Ray and its batches redone (Ray Data's actor pools retry by default); the
driver keeps the first copy of any id it receives twice, and the scan ends with the same exactly-once check
as the local engine.

Joining Ray and sizing the actor pools per node live in :mod:`autotune.engine.ray_cluster`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Unpack

import numpy as np

from autotune.data.sources import ImageSource, Record
from autotune.engine.config import EngineConfig, config_calibration
from autotune.engine.consumer import EmbeddingSink
from autotune.engine.ray_cluster import (
    NodePlan,
    NodeSizer,
    RayConnection,
    RayLayout,
    connect,
    import_ray,
    layout_for,
    plan_nodes,
)
from autotune.engine.ray_stages import KILL_FLAG_ENV, EmbedActor, preprocess_batch
from autotune.engine.ray_watch import NodeLost, watched_batches
from autotune.engine.result import ScanProgress, ScanResult, finished_scan
from autotune.engine.runner import ScanOptions, _query_matrix, _scan_records, preprocess_spec_for
from autotune.engine.sink import ShardSinkFactory
from autotune.engine.topk import RunningTopK
from autotune.errors import ConfigError
from autotune.models.backends import BackendSpec
from autotune.progress import Task


def _dataset(recs: Sequence[Record], rows: int) -> Any:
    """The records as a Ray dataset of id/locator blocks of ``rows`` records (a block is a preprocessing task)."""
    import pyarrow as pa
    import ray.data

    table = pa.table({"id": np.array([r.id for r in recs], np.int64), "locator": [r.locator for r in recs]})
    return ray.data.from_arrow([table.slice(i, rows) for i in range(0, len(recs), rows)])


def _embedded(
    ds: Any, layout: RayLayout, backend: BackendSpec, threads: int, device: str, kill_flag: str | None,
    omp_wait: str = "default", preprocess: dict[str, Any] | None = None, pin: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Append one device type's actor pool to ``ds`` (Ray restarts a dead actor and retries its batch)."""
    import ray.data

    gpu = device == "gpu"
    spec = BackendSpec(
        model_id=backend.model_id, device="cuda:0" if gpu else "cpu", precision=backend.precision if gpu else "fp32",
        backend="eager" if gpu else backend.backend, fake_delay_s=backend.fake_delay_s,
        batch=layout.gpu_batch if gpu else layout.cpu_batch, calibration=None if gpu else backend.calibration,
        streams=1 if gpu else backend.streams,
    )  # fmt: skip
    return ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"backend": spec, "threads": 1 if gpu else threads, "kill_flag": kill_flag,
                               "omp_wait": "default" if gpu else omp_wait, **(preprocess or {})},  # fmt: skip
        batch_size=spec.batch,
        compute=ray.data.ActorPoolStrategy(size=layout.gpu_actors if gpu else layout.cpu_actors),
        num_cpus=layout.cpu_share * (1 if gpu else threads),
        num_gpus=layout.gpus_per_actor if gpu else 0,
        batch_format="numpy",
        zero_copy_batch=True,
        **(pin or {}),
    )


def _node_share(plan: NodePlan) -> float:
    """A node's share of the records: its replicas' threads (a GPU replica counts as 16 cores)."""
    cfg = plan.config
    return cfg.cpu_models * cfg.cpu_threads + (16 * cfg.gpu_models * plan.gpus if cfg.gpu_models else 0)


def _split(
    recs: Sequence[Record], weights: Sequence[float], unit: Callable[[Record], str | None] | None = None
) -> list[tuple[int, int]]:
    """Cut ``recs`` into consecutive (lo, hi) ranges in proportion to ``weights``.

    With ``unit`` (a source's :meth:`~autotune.data.records.ImageSource.work_unit`), each cut moves to the
    nearest boundary between units, so that a unit (a WebDataset shard) goes whole to one range.
    """
    w = np.asarray(weights, float)
    cuts = np.concatenate([[0], np.round(np.cumsum(w) / w.sum() * len(recs))]).astype(int)
    if unit is not None and len(recs) > 1:
        names = [unit(r) for r in recs]
        bounds = np.array([i for i in range(1, len(recs)) if names[i] != names[i - 1]] + [0, len(recs)])
        if len(bounds) > 2 and names[0] is not None:
            inner = [int(bounds[np.argmin(np.abs(bounds - c))]) for c in cuts[1:-1]]
            cuts = np.array([0, *np.maximum.accumulate(inner), len(recs)]) if inner else cuts
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))


def _pipeline(
    source: ImageSource, recs: Sequence[Record], model_id: str, config: EngineConfig, plans: Sequence[NodePlan],
    fake_delay_s: float, calibration: str | None,
) -> tuple[Any, list[RayLayout]]:  # fmt: skip
    """One branch per node, pinned to it, each with the pools its own plan asks for, on a static share of the
    records (in proportion to its replicas, as the local engine's static scheduling); the branches' union."""
    shares = [_node_share(p) for p in plans]
    if not any(shares):
        raise ConfigError("no Ray node can run a model replica (no CPU replica planned and no GPU visible)"
                          if plans else "the Ray cluster has no alive node with CPUs")  # fmt: skip
    branches, layouts = [], []
    for plan, (lo, hi) in zip(plans, _split(recs, shares, source.work_unit), strict=True):
        if hi <= lo:
            continue
        layout = layout_for([plan])
        layouts.append(layout)
        branches.append(_node_branch(source, recs[lo:hi], model_id, config, layout, plan.node_id, fake_delay_s,
                                     calibration))  # fmt: skip
    return (branches[0] if len(branches) == 1 else branches[0].union(*branches[1:])), layouts


def _node_branch(
    source: ImageSource, recs: Sequence[Record], model_id: str, config: EngineConfig, layout: RayLayout,
    node_id: str, fake_delay_s: float, calibration: str | None,
) -> Any:  # fmt: skip
    """Records -> preprocessing tasks -> actor pools on one node (CPU and GPU pools each take a static share of
    the records); records -> CPU actors that preprocess their own batches where the layout is ``fused``."""
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Hard affinity: each node runs the replicas its own plan asks for, and a pixel never leaves the node that
    # decoded it. A lost node fails its branch; the driver then plans the rest again on the nodes left.
    pin = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)} if node_id else {}
    # Ray 2.60 warns that extra remote arguments go in Ray 2.64, for named ones. Node affinity has none yet,
    # and its hard form is what fails a lost node's work at once (ActorUnschedulableError), which the driver
    # turns into a new plan on the nodes left.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
    pre = preprocess_spec_for(model_id)
    backend = BackendSpec(model_id=model_id, precision=config.gpu_precision, backend=config.cpu_backend,
                          fake_delay_s=fake_delay_s, calibration=calibration, streams=config.cpu_streams)  # fmt: skip
    kill_flag = os.environ.get(KILL_FLAG_ENV) or None
    pools = [(d, n, b) for d, n, b in (("cpu", layout.cpu_actors, layout.cpu_batch),
                                        ("gpu", layout.gpu_actors, layout.gpu_batch)) if n]  # fmt: skip
    # With both pools, each gets a share of the records in proportion to actors x batch: a static split, as
    # the local engine's static scheduling; with one pool (the usual case) it takes everything.
    parts = []
    for (device, _n, _b), (lo, hi) in zip(pools, _split(recs, [n * b for _d, n, b in pools]), strict=True):
        if hi <= lo:
            continue
        rows = layout.block_rows(hi - lo)
        ds = _dataset(recs[lo:hi], rows)
        if device == "cpu" and layout.fused:  # the actors read and preprocess their own batches
            parts.append(_embedded(ds, layout, backend, layout.cpu_threads, device, kill_flag, config.omp_wait,
                                   preprocess={"source": source, "spec": pre}, pin=pin))  # fmt: skip
            continue
        ds = ds.map_batches(
            preprocess_batch, fn_kwargs={"source": source, "spec": pre}, batch_size=None, num_cpus=layout.cpu_share,
            compute=ray.data.TaskPoolStrategy(size=max(1, layout.preprocess_tasks)), batch_format="numpy",
            # The memory a task holds (its batch of pixels, twice over while decoding) is also what keeps Ray
            # Data from fusing this stage into the actors, which it does to stages of equal remote arguments:
            # decode and the model would then take turns in one process instead of overlapping on two cores.
            memory=2 * rows * pre.crop * pre.crop * 3, **pin,
        )  # fmt: skip
        parts.append(_embedded(ds, layout, backend, layout.cpu_threads, device, kill_flag, config.omp_wait, pin=pin))
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
        self.nodes: dict[str, NodePlan] = {}  # Ray node id -> its plan (the first one made for it)
        self.lost: list[NodePlan] = []  # nodes that left the cluster mid-scan

    def plan(self, plans: Sequence[NodePlan]) -> None:
        """Book the nodes a (re)planned pipeline runs on."""
        for p in plans:
            self.nodes.setdefault(p.node_id, p)

    def has(self, rid: int) -> bool:
        """Whether record ``rid`` came back already (embedded or skipped)."""
        return 0 <= rid < len(self._seen) and bool(self._seen[rid])

    def per_node(self) -> list[dict[str, Any]]:
        """Images each node embedded: address, machine id, images, and whether it was lost mid-scan."""
        images: dict[str, int] = {}
        for a in self.actors.values():
            images[a["node"]] = images.get(a["node"], 0) + a["images"]
        lost = {p.node_id for p in self.lost}
        return [{"address": p.address, "machine_id": p.machine_id, "images": images.get(nid, 0),
                 "lost": nid in lost, "config": p.config.describe()}
                for nid, p in self.nodes.items()]  # fmt: skip

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
    address: str | None = None,
    sizer: NodeSizer | None = None,
    **options: Unpack[ScanOptions],
) -> ScanResult:
    """Scan ``records`` (default: every record of ``source``) on a Ray cluster; same result as :func:`run_scan`,
    which documents the shared ``options``.

    ``address`` is ``auto`` or ``HOST:PORT`` of a running cluster, or None to start a private Ray on this
    machine for the run (a process already connected keeps its session). Each node's pools are sized by
    ``sizer`` (the facts a node reports -> its configuration: a retrieval passes one that reads the profile
    each node's machine keeps), else from ``config``, fitted to the CPUs Ray gives the node, and pinned to it;
    the backend is always ``config``'s. A node that leaves the cluster mid-scan has its records not yet back
    planned again on the nodes left (``workers[0]['stats']``: ``nodes``, ``min_images_per_node``,
    ``nodes_lost``). The driver writes what
    ``sink_factory(n)`` opens (``n`` unique per run), merges the exact top-k, skips unreadable images with
    their reasons and checks that every record was embedded or skipped exactly once. ``scan_seconds`` and
    images/s run from the call, the actors' start-up included (preprocessing runs ahead while they load, so no
    later start is fair); ``startup_s`` is when the last actor had loaded; the Ray start-up itself is apart
    (``workers[0]['stats']['ray_startup_s']``).

    Example:
        >>> q = embed_queries("synthetic:tiny", ["a photo of Felis catus"])
        >>> res = run_scan_ray(open_source("data/"), "synthetic:tiny", EngineConfig(), queries=q)  # doctest: +SKIP
        >>> res.hits(0)[:3]  # doctest: +SKIP
    """
    config.validate(cores=10**6, gpus=10**6)  # the driver's cores and GPUs are not the cluster's
    records, top_k, calibration = options.get("records"), options.get("top_k", 9), options.get("calibration")
    sink_factory, progress, on_batch = options.get("sink_factory"), options.get("progress"), options.get("on_batch")
    fake_delay_s = options.get("fake_delay_s", 0.0)
    recs = _scan_records(source, records)
    q = _query_matrix(options.get("queries"))
    conn = connect(address)
    task: Task | None = None
    sink: EmbeddingSink | None = None
    try:
        wall0, t0 = time.time(), time.perf_counter()
        # Shard names carry the writer's consumer number and pid: the local engine's replicas are new processes
        # every run, this driver may not be (a library caller scanning twice), so its number is the run's start
        # time in microseconds, or a resumed scan in the same process would overwrite the shards it resumes from.
        sink = sink_factory(time.time_ns() // 1000) if sink_factory is not None else None
        topk = RunningTopK(len(q), top_k)
        books = _RayBooks(wall0, [r.id for r in recs])
        task = progress("scan", len(recs)) if progress is not None else None
        todo: Sequence[Record] = recs
        layouts: list[RayLayout] = []
        while todo:
            plans = plan_nodes(config, sizer=sizer)
            books.plan(plans)
            ds, layouts = _pipeline(source, todo, model_id, config, plans, fake_delay_s,
                                    calibration or config_calibration(source, model_id, config))  # fmt: skip
            try:
                for batch in watched_batches(ds, plans, books.lost):
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
                todo = []
            except NodeLost:
                # The lost node's share is planned again on the nodes left: the records not yet back, once each.
                todo = [r for r in recs if not books.has(r.id)]
        if sink is not None:
            sink.close()
        end = time.time()
        return _result(books, config, layouts, conn, [r.id for r in recs], topk, len(q), end)
    finally:
        if task is not None:
            task.close()
        if isinstance(sink_factory, ShardSinkFactory):
            sink_factory.remove_leftovers()
        if conn.started_here:
            import_ray().shutdown()


def _result(
    books: _RayBooks, config: EngineConfig, layouts: list[RayLayout], conn: RayConnection, requested: list[int],
    topk: RunningTopK, queries: int, end: float,
) -> ScanResult:  # fmt: skip
    """Check the accounting and add the figures up; the scan clock starts at the call (start-up included)."""
    # The scan is timed from the call, start-up included. The local engine's producers wait until every
    # replica has loaded, so its clock can start then; Ray Data's preprocessing tasks run ahead while the actors
    # load (into the object store), and a clock started when the actors were ready counted that work for free:
    # it read 3.7 times the local rate on 200 images. The actors' start-up is still reported (startup_s).
    t_go = min(max([a["ready_t"] for a in books.actors.values()] + [books.start]), end)
    pids = {pid: i for i, pid in enumerate(sorted(books.actors))}
    workers = [
        {"role": "consumer", "index": pids[pid], "pid": pid, "affinity": None,
         "stats": {**a, "ready_s": round(a["ready_t"] - books.start, 3)}}
        for pid, a in sorted(books.actors.items())
    ]  # fmt: skip
    busy = sum(a["busy_s"] for a in books.actors.values())
    loaded = end - t_go  # the actors' busy share counts from when the last of them was ready
    # The rate once every actor had loaded, counting only the images that came back after that (the local
    # engine's figure from loaded replicas). Fair where the actors preprocess their own batches (``fused``); a
    # task stage runs ahead while they load, and its work would count for free.
    after = sum(n for t, n, _pid in books.received if t > t_go)
    nodes = books.per_node()
    workers.insert(0, {"role": "driver", "index": 0, "pid": os.getpid(), "affinity": None,
                       "stats": {"ray_startup_s": round(conn.startup_s, 3), "ray_address": conn.address,
                                 "layout": "; ".join(dict.fromkeys(lay.describe() for lay in layouts)),
                                 "duplicates_dropped": books.duplicates,
                                 "preprocessing": "inside the actors" if all(lay.fused for lay in layouts)
                                 else "tasks",
                                 "nodes": nodes, "min_images_per_node": min((n["images"] for n in nodes), default=0),
                                 "nodes_lost": [p.address for p in books.lost],
                                 "driver_s": round(books.driver_s, 3),
                                 "steady_images_per_s": round(after / loaded, 3) if loaded > 0 else 0.0}})  # fmt: skip
    share = busy / (len(pids) * loaded) if pids and loaded > 0 else 0.0
    return finished_scan(
        config, requested, books.embedded, books.skipped, images=books.images,
        clock=(books.start, t_go, books.start, end), topk=topk.result() if queries else None,
        batch_log=[(t - books.start, n, pids[pid]) for t, n, pid in books.received], consumers=len(pids),
        workers=workers,
        bottleneck=(f"model actors (busy {share:.0%} since they loaded)" if share >= 0.8
                    else f"preprocessing or transfer (model actors busy {share:.0%} since they loaded)"),
    )  # fmt: skip
