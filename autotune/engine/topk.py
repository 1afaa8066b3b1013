"""Running top-k per query, and the exact merge of per-replica top-k lists."""

from __future__ import annotations

import numpy as np


class RunningTopK:
    """Keeps the k best (score, id) pairs per query across batches.

    Ties are broken by the smaller id, so results do not depend on batch order or replica count.
    """

    def __init__(self, queries: int, k: int) -> None:
        """An empty top-k of ``k`` per query."""
        self.k = k
        self.scores = np.full((queries, 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((queries, 0), dtype=np.int64)

    def update(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge a batch: ``scores`` is (queries, n), ``ids`` is (n,)."""
        if scores.shape[1] == 0:
            return
        all_scores = np.concatenate([self.scores, scores.astype(np.float32)], axis=1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, scores.shape)], axis=1)
        self.scores, self.ids = select_topk(all_scores, all_ids, self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (queries, <=k), best first."""
        return self.scores, self.ids


def select_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row by score descending, then id ascending (deterministic ties)."""
    if len(scores) == 0:  # a scan with no query (timing only)
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64)
    rows = []
    for s, i in zip(scores, ids, strict=True):
        order = np.lexsort((i, -s))[:k]
        rows.append((s[order], i[order]))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-replica (scores, ids) lists into the exact global top-k."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    return select_topk(scores, ids, k)
