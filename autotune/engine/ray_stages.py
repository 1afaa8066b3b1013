"""The Ray engine's stages: a CPU task that reads and preprocesses records, and the image-tower actor.

Both run inside Ray worker processes and are defined at module top level so that Ray pickles them by
reference; heavy objects (the source's listing, the model) are built there, never shipped. A batch is a dict
of columns (Ray Data's numpy format), one row per record: a record that cannot be read or decoded stays in
the batch with ``ok`` False and its reason, so the driver accounts for every record it asked for.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.data.records import ImageSource, Record
from autotune.models.backends import BackendSpec

if TYPE_CHECKING:  # the module imports torch: the stages import it inside the worker
    from autotune.preprocess import PreprocessSpec

#: Fault injection for tests and drills: an actor that finds the file this variable names deletes it and exits
#: hard mid-batch, as a crashed or preempted worker would. The driver reads the variable and hands the path to
#: its actors, so it works on a cluster whose workers do not share the driver's environment.
KILL_FLAG_ENV = "AUTOTUNE_RAY_KILL_FLAG"

_THREADS_SET = False


def _one_torch_thread() -> None:
    """One intra-op thread per preprocessing task (the fast path resizes with a torch kernel), set once per worker."""
    global _THREADS_SET
    if not _THREADS_SET:
        import torch

        torch.set_num_threads(1)
        _THREADS_SET = True


def preprocess_batch(batch: dict[str, np.ndarray], *, source: ImageSource, spec: PreprocessSpec) -> dict[str, Any]:
    """Read and preprocess one batch of records into uint8 pixels; unreadable ones keep their row with a reason.

    Example:
        >>> out = preprocess_batch({"id": np.array([0]), "locator": np.array(["a/0.jpg"])}, source=src, spec=spec)
        >>> out["pixels"].shape  # doctest: +SKIP
        (1, 224, 224, 3)
    """
    from autotune.errors import BadImageError
    from autotune.preprocess import fast_preprocess

    _one_torch_thread()
    ids = np.asarray(batch["id"], np.int64)
    n = len(ids)
    pixels = np.zeros((n, spec.crop, spec.crop, 3), np.uint8)
    ok = np.ones(n, bool)
    reasons, details = [""] * n, [""] * n
    for row, (rid, locator) in enumerate(zip(ids.tolist(), batch["locator"].tolist(), strict=True)):
        try:
            data = source.read_bytes(Record(int(rid), str(locator), None))
            fast_preprocess(data, spec, out=pixels[row])
        except OSError as exc:
            ok[row], reasons[row], details[row] = False, "unreadable", str(exc)[:200]
        except BadImageError as exc:
            ok[row], reasons[row], details[row] = False, exc.reason, exc.detail[:200]
    return {
        "id": ids, "locator": batch["locator"], "ok": ok, "reason": np.array(reasons, dtype=object),
        "detail": np.array(details, dtype=object), "pixels": pixels,
    }  # fmt: skip


class EmbedActor:
    """One model replica in a Ray actor pool: embeds the readable rows of each batch it is handed (or, built with
    a source and a preprocessing spec, reads and preprocesses a batch of records first).

    Built inside the actor process from a :class:`BackendSpec`; every output row carries the actor's pid,
    node and the time its model was ready, so the driver can time the scan from when the pool was loaded.

    Example:
        >>> actor = EmbedActor(BackendSpec(model_id="fake:8"), threads=1)
        >>> actor({"id": ..., "ok": ..., "pixels": ...})["embedding"].shape  # doctest: +SKIP
        (32, 8)
    """

    def __init__(
        self, backend: BackendSpec, threads: int, kill_flag: str | None = None, omp_wait: str = "default",
        source: ImageSource | None = None, spec: PreprocessSpec | None = None,
    ) -> None:  # fmt: skip
        """Fix the thread count (and OpenMP's wait policy) before the model exists, then build it.

        With ``source`` and ``spec`` the actor reads and preprocesses its batches itself (records in, no pixels).
        """
        from autotune.engine.consumer import _set_threads
        from autotune.models.backends import build_backend

        _set_threads(threads, need_torch=backend.needs_torch, omp_wait=omp_wait)
        self.backend = build_backend(dataclasses.replace(backend, threads=threads))
        self.kill_flag = kill_flag
        self.preprocess = (source, spec) if source is not None and spec is not None else None
        self.pid = os.getpid()
        self.node = this_node()
        self.ready_t = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Embed one batch (rows with ``ok`` False get a zero row, which the driver never stores)."""
        if self.kill_flag and os.path.exists(self.kill_flag):
            os.remove(self.kill_flag)
            os._exit(1)  # a hard crash mid-batch: no exception handler, no clean-up
        t0 = time.perf_counter()  # busy time includes the preprocessing of a fused actor: its work too
        if self.preprocess is not None:
            batch = preprocess_batch(batch, source=self.preprocess[0], spec=self.preprocess[1])
        ok = np.asarray(batch["ok"], bool)
        n = len(ok)
        emb = np.zeros((n, self.backend.embed_dim), np.float32)
        if ok.any():
            emb[ok] = self.backend.embed(np.ascontiguousarray(batch["pixels"][ok]))
        busy = time.perf_counter() - t0
        return {
            "id": batch["id"], "locator": batch["locator"], "ok": ok, "reason": batch["reason"],
            "detail": batch["detail"], "embedding": emb, "pid": np.full(n, self.pid, np.int64),
            "node": np.array([self.node] * n, dtype=object), "ready_t": np.full(n, self.ready_t),
            "busy_s": np.full(n, busy / max(n, 1)),
        }  # fmt: skip


def node_machine_id(probe: Callable[[], Any] | None = None) -> dict[str, Any]:
    """This node's machine id, its host's cores and visible GPUs, and what ``probe`` reads here (run as a task
    pinned to each node)."""
    from autotune.machine import detect_machine

    info = detect_machine()
    return {"machine_id": info.machine_id, "gpus": info.gpu_count, "cores": info.logical_cores,
            "local": probe() if probe is not None else None}  # fmt: skip


def this_node() -> str:
    """Ray's id of the node this process runs on (two raylets of one host share its name and IP)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())
