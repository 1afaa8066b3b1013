"""Watching a Ray scan's batches stream in: a node lost mid-scan is noticed, never waited for.

Ray Data's iterator blocks until a batch is ready, and a pipeline branch pinned to a node that left the cluster
may fail at once or simply never finish; the driver reads the batches through a thread and looks at the cluster
whenever none came for a while, so that the scan can plan the rest again on the nodes left
(:mod:`autotune.engine.ray_runner`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from autotune.engine.ray_cluster import NodePlan, alive_nodes


class NodeLost(Exception):
    """A node the scan was planned on left the cluster mid-scan (its share is planned again on the others)."""


#: Seconds between the driver's looks at the cluster while it waits for a batch: a branch pinned to a lost node
#: may neither fail nor finish (its actors cannot be placed anywhere), so waiting alone could wait forever.
NODE_CHECK_S = 2.0


def watched_batches(ds: Any, plans: Sequence[NodePlan], lost: list[NodePlan]) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's batches as they come back; :class:`NodeLost` once a node of ``plans`` is no longer alive
    (added to ``lost``).

    Ray Data's iterator blocks until a batch is ready, so it runs in a thread that hands batches over a queue;
    the driver looks at the cluster whenever none came for :data:`NODE_CHECK_S` seconds, and after a failure.
    Stopping early (a lost node, Ctrl-C, a failure in the driver) stops the executor, so its actors give their
    CPUs back before the next plan asks for them.
    """
    out: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()
    done = object()
    executors = _keep_executors(ds)

    def pump() -> None:
        """Feed the queue from Ray Data's iterator (in a thread of the driver)."""
        it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
        try:
            for batch in it:
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            item: Any = done
        except BaseException as exc:  # handed to the driver's thread, which decides what it means
            item = exc
        finally:
            if hasattr(it, "close"):
                it.close()
        if not stop.is_set():
            out.put(item)

    thread = threading.Thread(target=pump, name="ray-batches", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = out.get(timeout=NODE_CHECK_S)
            except queue.Empty:
                _check_nodes(plans, lost)
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                _check_nodes(plans, lost, wait_s=NODE_DEATH_WAIT_S if _lost_process(item) else 0.0)
                raise item
            yield item
    finally:
        stop.set()
        for executor in executors:  # unblocks the thread's iterator, and gives the actors' CPUs back
            with contextlib.suppress(Exception):
                executor.shutdown(force=True)
        thread.join(timeout=30)


def _keep_executors(ds: Any) -> list[Any]:
    """The streaming executors ``ds`` will create, kept as they are created, so the driver can stop them.

    Ray Data keeps a handle on a dataset's executor only once its first block is out (``_current_executor``); a
    pipeline stopped before that (a node lost while the actors load, Ctrl-C) would go on running, its actors
    holding the CPUs the next plan needs.
    """
    made: list[Any] = []
    create = getattr(ds, "_create_executor", None)
    if create is None:  # another Ray Data: the handle Ray Data keeps, once there is one
        return [e for e in [getattr(ds, "_current_executor", None)] if e is not None]

    def keep() -> Any:
        """Create the executor as Ray Data would, and keep it."""
        executor = create()
        made.append(executor)
        return executor

    ds._create_executor = keep
    return made


#: Seconds a failure that lost a process (an actor or object gone, not an error in our code) waits for Ray to
#: declare a node dead: the failure may reach the driver before the cluster's records do.
NODE_DEATH_WAIT_S = 30.0


def _lost_process(exc: BaseException) -> bool:
    """Whether a failure is Ray losing a process or an object (what a lost node causes), not an error raised by
    the stages' own code (a ``RayTaskError``)."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(exc, ray.exceptions.RayTaskError)


def _check_nodes(plans: Sequence[NodePlan], lost: list[NodePlan], wait_s: float = 0.0) -> None:
    """Raise :class:`NodeLost` (and add the node to ``lost``) when a node of ``plans`` is no longer alive, looking
    again for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = {str(n["NodeID"]) for n in alive_nodes()}
        gone = [p for p in plans if p.node_id and p.node_id not in alive]
        if gone:
            lost.extend(p for p in gone if p not in lost)
            raise NodeLost(", ".join(p.address for p in gone))
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)
