"""Consumer process: one model replica that embeds ready batches, scores them and keeps a top-k."""

from __future__ import annotations

import dataclasses
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from autotune.engine.events import BatchDone, Done, Event, FilledSlot, Ready, Skip
from autotune.engine.lifecycle import error_event, worker_start
from autotune.engine.telemetry import CONSUMER_WAIT, StageTimer
from autotune.engine.topk import RunningTopK
from autotune.engine.transport import SlotLayout, SlotPool
from autotune.models.backends import BackendSpec

if TYPE_CHECKING:  # the module imports torch; a replica imports it once its threads are set
    from autotune.preprocess import PreprocessSpec


class EmbeddingSink(Protocol):
    """Receives every embedding a replica computes (the retrieval index is built on this)."""

    def write(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Store one batch of (ids, float32 embeddings)."""

    def close(self) -> None:
        """Flush and commit what was written."""


@dataclass(frozen=True)
class ConsumerSpec:
    """Everything a consumer needs, picklable; the model is built inside the process."""

    index: int
    device: str
    backend: BackendSpec
    layout: SlotLayout
    queries: np.ndarray
    top_k: int
    threads: int
    batch: int
    cores: tuple[int, ...] | None = None
    sink_factory: Callable[[int], EmbeddingSink] | None = None
    preprocess: PreprocessSpec | None = None  # the geometry a replica that decodes (decode: gpu) reproduces
    decode: str = "cpu"  # "gpu": decode the JPEGs producers ship encoded, in batches, on this replica's device
    omp_wait: str = "default"  # "passive": idle OpenMP threads sleep at once (EngineConfig.omp_wait)


def _set_threads(threads: int, need_torch: bool = True, omp_wait: str = "default") -> dict[str, Any]:
    """Fix the intra-op thread count (and OpenMP's wait policy) before torch does any work; return what is in
    effect. libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it: only a process that has not imported
    torch yet (a spawned replica) can change it."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if omp_wait == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # The fake backend, ONNX Runtime and OpenVINO never import torch: importing it only to set its threads would
    # cost their workers 2-3 s of start-up (the runtimes take the thread count from the backend spec).
    if not need_torch:
        return {"torch_threads": None, "omp_num_threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # what libgomp read when torch loaded it
    }


def _gather(pool: SlotPool, items: list[FilledSlot]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels and ids of one or more ready slots (one slot: views, no copy of the pixels)."""
    if len(items) == 1:
        slot, n, _ = items[0]
        return pool.pixels[slot, :n], pool.ids[slot, :n].copy()
    pixels = np.concatenate([pool.pixels[s, :n] for s, n, _ in items])
    return pixels, np.concatenate([pool.ids[s, :n] for s, n, _ in items])


def _embed_items(
    pool: SlotPool, items: list[FilledSlot], backend: Any, decoder: Any, spec: ConsumerSpec, timer: StageTimer
) -> tuple[np.ndarray, np.ndarray, list[Skip]]:
    """Embed the images of ready slots: (embeddings, ids, skips).

    Without a decoder every image arrives as pixels. With one, the encoded JPEGs are decoded here in one batch
    on the replica's device (what the CPU path could not take arrived as pixels and is embedded apart); an
    image that decodes on neither path is skipped with the CPU path's reason (the parent fills its locator).
    """
    if decoder is None:
        pixels, ids = _gather(pool, items)
        return backend.embed(pixels), ids, []
    ready_px, ready_ids, datas, enc_ids = [], [], [], []
    for slot, n, _b in items:
        lengths = pool.lengths[slot, :n]
        encoded = lengths > 0
        if not encoded.all():
            ready_px.append(pool.pixels[slot, :n][~encoded])
            ready_ids.append(pool.ids[slot, :n][~encoded])
        for i in np.flatnonzero(encoded):
            datas.append(pool.encoded[slot, i, : lengths[i]].tobytes())
            enc_ids.append(int(pool.ids[slot, i]))
    embs, idss, skips = [], [], []
    if ready_px:
        embs.append(backend.embed(np.concatenate(ready_px)))
        idss.append(np.concatenate(ready_ids))
    if datas:
        with timer.stage("decode"):
            decoded, failures = decoder.decode(datas, spec.preprocess)
        failed = {i for i, _e in failures}
        skips = [Skip(enc_ids[i], "", e.reason, e.detail[:200]) for i, e in failures]
        ok_ids = np.array([rid for i, rid in enumerate(enc_ids) if i not in failed], np.int64)
        if len(ok_ids):
            embs.append(backend.embed_decoded(decoded))
            idss.append(ok_ids)
    if not embs:
        return np.zeros((0, backend.embed_dim), np.float32), np.zeros(0, np.int64), skips
    return np.concatenate(embs), np.concatenate(idss), skips


def consumer_main(
    spec: ConsumerSpec, ready: Queue[FilledSlot | None], free_slots: Queue[int], events: Queue[Event]
) -> None:
    """Loop: take ready slot(s), embed, score against the queries, release the slot(s); report at the end."""
    worker_start()
    pool: SlotPool | None = None
    sink: EmbeddingSink | None = None
    try:
        if spec.cores:
            os.sched_setaffinity(0, spec.cores)
        # A replica that decodes resizes with torch (CPU) or decodes into torch tensors (GPU): it needs torch too.
        info = _set_threads(
            spec.threads, need_torch=spec.backend.needs_torch or spec.decode == "gpu", omp_wait=spec.omp_wait
        )
        info["affinity"] = sorted(os.sched_getaffinity(0))
        timer = StageTimer()
        with timer.stage("load"):
            from autotune.models.backends import build_backend

            backend = build_backend(dataclasses.replace(spec.backend, threads=spec.threads))
            info.update(backend.info())  # setup seconds and artefact cache hits, apart from throughput
            if info["torch_threads"] is None and "intra_op_threads" in info:
                # The tuner records torch_threads as the replica's thread count: without torch, the runtime's.
                info["torch_threads"] = info["intra_op_threads"]
            pool = SlotPool.attach(spec.layout)
            sink = spec.sink_factory(spec.index) if spec.sink_factory else None
            decoder = None
            if spec.decode == "gpu" and spec.preprocess is not None:
                from autotune.preprocess.decoders import decoder_for

                decoder = decoder_for(spec.device)
                decoder.warm(spec.preprocess)  # imports and first-call costs count as load, not as the scan
                info["decoder"] = decoder.name
        topk = RunningTopK(len(spec.queries), spec.top_k)
        queries_t = np.ascontiguousarray(spec.queries.T, dtype=np.float32)
        events.put(Ready("consumer", spec.index, os.getpid(), info))
        finished = False
        while not finished:
            with timer.stage(CONSUMER_WAIT):
                item: FilledSlot | None = ready.get()
            if item is None:
                break
            items = [item]
            total = item.images
            # A replica with a larger batch than a slot holds (GPUs) coalesces whatever is ready now.
            while total < spec.batch:
                try:
                    nxt = ready.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    finished = True
                    break
                items.append(nxt)
                total += nxt.images
            t0 = time.perf_counter()
            emb, ids, skips = _embed_items(pool, items, backend, decoder, spec, timer)
            for slot, _n, _b in items:
                free_slots.put(slot)
            for stage, secs in backend.timings().items():
                timer.add(stage, secs)
            with timer.stage("score"):
                if len(ids):
                    topk.update(queries_t.T @ emb.T if len(spec.queries) else np.zeros((0, len(ids))), ids)
                    if sink is not None:
                        sink.write(ids, emb)
            busy = time.perf_counter() - t0
            timer.count("images", len(ids))
            timer.count("batches")
            timer.count("skipped", len(skips))
            batch_nos = [it.batch_no for it in items]
            events.put(BatchDone(spec.index, batch_nos, len(ids), time.perf_counter(), busy, ids, skips))
        if sink is not None:
            with timer.stage("score"):
                sink.close()
        stats = timer.snapshot()
        stats.update(info)
        events.put(Done("consumer", spec.index, stats, topk.result()))
    except Exception as exc:
        events.put(error_event("consumer", spec.index, exc))
    finally:
        if pool is not None:
            pool.close()
