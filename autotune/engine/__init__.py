"""The producer-consumer scan engine: shared-memory batches, CPU/GPU model replicas, exact top-k."""

from __future__ import annotations

from autotune.engine.config import EngineConfig, gpu_count, logical_cores
from autotune.engine.consumer import EmbeddingSink
from autotune.engine.result import ScanMismatch, ScanProgress, ScanResult
from autotune.engine.runner import embed_queries, run_scan
from autotune.engine.topk import RunningTopK, merge_topk, select_topk
from autotune.engine.workers import ScanAborted

__all__ = [
    "EmbeddingSink",
    "EngineConfig",
    "RunningTopK",
    "ScanAborted",
    "ScanMismatch",
    "ScanProgress",
    "ScanResult",
    "embed_queries",
    "gpu_count",
    "logical_cores",
    "merge_topk",
    "run_scan",
    "select_topk",
]
