"""Top-k over an index's embeddings: an exact product, or a half-precision pass proven exact by a re-rank.

An index keeps its embeddings as stored (float16 by default). Reading them is the whole cost of a query at
500,000 images (bound by memory bandwidth, not arithmetic), so the ``rerank`` scan reads the float16 matrix
as it is (half the bytes of a float32 copy), keeps the best candidates, and scores those again exactly (float32
products of the stored values, the same numbers as the ``exact`` scan). The answer is the exact answer
whenever every image that could tie with the k-th best is a candidate; a query where that is not proven (many
near-equal scores at the boundary) is answered by the exact scan instead, so the result never differs.

Several queries at once (a server's concurrent requests) read the matrix once for all of them where the CPU
multiplies bfloat16 natively (AVX512-BF16 or AMX): a bfloat16 copy is kept for that, and the same proof applies
with its own error bound. Elsewhere each query makes its own float16 pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

SCAN_MODES = ("rerank", "exact")
DEFAULT_SCAN = "rerank"
# Candidates kept per query by the float16 pass: enough that near-ties at the boundary are rare.
_CANDIDATES = 128
# The float16 pass's score error is measured on a sample at load; the bound used is this many times the
# largest error seen, and never below the analytic bound for unit vectors (query and output rounding).
_ERROR_MARGIN = 4.0
_MIN_ERROR = 2.0 * 2.0**-11
_BLOCK = 65_536  # rows up-cast at a time by the exact fallback (32 MB of float32 at 512 wide)


@dataclass
class ScanStats:
    """How queries were answered since load: by the proven fast path or by the exact fallback."""

    fast: int = 0
    exact: int = 0


class IndexMatrix:
    """One generation's ids and embeddings, searched for the top-k of each query.

    ``scan`` is ``rerank`` (default: a float16 pass over the stored matrix, then an exact re-rank of the
    candidates; falls back to ``exact`` per query where the re-rank cannot prove its answer) or ``exact``
    (a float32 product over every row, the reference).

    Example:
        >>> m = IndexMatrix(np.arange(3), np.eye(3, dtype=np.float16))
        >>> m.search(np.eye(3, dtype=np.float32)[:1], k=1)[1]
        array([[0]])
    """

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, scan: str = DEFAULT_SCAN) -> None:
        """Keep the arrays; the float16 view and its error bound are made once, here."""
        if scan not in SCAN_MODES:
            raise ValueError(f"scan must be one of {', '.join(SCAN_MODES)}, got {scan!r}")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.embeddings = embeddings
        self.scan = scan
        self.stats = ScanStats()
        self._exact: np.ndarray | None = None
        self._half: torch.Tensor | None = None
        self._bf16: torch.Tensor | None = None
        self.error_bound = 0.0
        self.bf16_error_bound = 0.0
        if scan == "rerank" and len(self.ids) > _CANDIDATES:
            self._prepare_half()

    def __len__(self) -> int:
        """Images in the matrix."""
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.embeddings.shape[1])

    def _prepare_half(self) -> None:
        """Float16 (and, where native, bfloat16) tensors over the stored rows, each with its measured error."""
        import torch

        half = self.embeddings if self.embeddings.dtype == np.float16 else self.embeddings.astype(np.float16)
        if not half.flags.writeable:  # torch wants a writable buffer; it never writes to it
            half = half.copy()
        self._half = torch.from_numpy(half)
        if _native_bf16():
            self._bf16 = self._half.to(torch.bfloat16)
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(self.ids), size=min(4096, len(self.ids)), replace=False))
        probe = rng.standard_normal((4, self.dim)).astype(np.float32)
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
        exact = probe @ self.embeddings[rows].astype(np.float32).T
        picked = torch.from_numpy(rows)
        self.error_bound = _bound(self._coarse(probe, self._half[picked]), exact)
        if self._bf16 is not None:
            self.bf16_error_bound = _bound(self._coarse_many(probe, self._bf16[picked]), exact)

    @staticmethod
    def _coarse_many(queries: np.ndarray, matrix: Any) -> np.ndarray:
        """Bfloat16 scores (queries, rows) as float32: one matrix product reads the matrix once for all queries."""
        import torch

        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(torch.bfloat16)
        return (q @ matrix.T).float().numpy()

    @staticmethod
    def _coarse(queries: np.ndarray, half: Any) -> np.ndarray:
        """Float16 scores (queries, rows) as float32: one matrix-vector pass per query (float32 accumulation)."""
        import torch

        q16 = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(torch.float16)
        # One gemv per query: on CPUs without float16 matrix units torch's gemv reads the matrix once per
        # query at full bandwidth, while its float16 gemm is emulated and slower per query.
        return np.stack([(half @ q).float().numpy() for q in q16])

    def _exact_rows(self) -> np.ndarray:
        """The float32 matrix the exact scan multiplies (made on first use, then kept)."""
        if self._exact is None:
            self._exact = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        return self._exact

    def search(self, queries: np.ndarray, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first, ties by id; scores are exact float32 products."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.ids))
        if self.scan == "exact" or self._half is None:
            self.stats.exact += len(q)
            return top_k(q @ self._exact_rows().T, self.ids, k)
        if len(q) > 1 and self._bf16 is not None:
            coarse, bound = self._coarse_many(q, self._bf16), self.bf16_error_bound
        else:
            coarse, bound = self._coarse(q, self._half), self.error_bound
        out_s, out_i = [], []
        for row, scores in zip(q, coarse, strict=True):
            s, i = self._rerank(row, scores, bound, k)
            out_s.append(s)
            out_i.append(i)
        return np.stack(out_s), np.stack(out_i)

    def _rerank(self, query: np.ndarray, coarse: np.ndarray, bound: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's exact top-k from its coarse scores; the exact scan where the candidates cannot prove it."""
        import torch

        n_cand = min(len(self.ids), max(_CANDIDATES, 8 * k))
        top = torch.topk(torch.from_numpy(coarse), n_cand)
        cand = np.sort(top.indices.numpy())
        exact = self.embeddings[cand].astype(np.float32) @ query
        scores, ids = top_k(exact[None, :], self.ids[cand], k)
        # Proof: every row's coarse score is within ``bound`` of its exact one. A row outside the candidates
        # scores at most the boundary (the lowest candidate's coarse score) + bound; if that is below the k-th
        # exact score, no row outside could enter or tie the top k.
        boundary = float(top.values[-1])
        if n_cand == len(self.ids) or boundary + bound < float(scores[0, -1]):
            self.stats.fast += 1
            return scores[0], ids[0]
        self.stats.exact += 1
        return self._exact_chunked(query, k)

    def _exact_chunked(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact scan without a float32 copy of the whole matrix: blocks of rows, each up-cast alone."""
        if self._exact is not None:
            scores, ids = top_k(query[None, :] @ self._exact.T, self.ids, k)
            return scores[0], ids[0]
        parts = [self.embeddings[i : i + _BLOCK].astype(np.float32) @ query for i in range(0, len(self.ids), _BLOCK)]
        scores, ids = top_k(np.concatenate(parts)[None, :], self.ids, k)
        return scores[0], ids[0]


def _native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), so a bfloat16 pass is fast."""
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):  # an older or newer torch without these probes: no bfloat16 pass
        return False


def _bound(coarse: np.ndarray, exact: np.ndarray) -> float:
    """The error bound a coarse pass is trusted with: a margin over the largest error seen on the sample."""
    seen = float(np.abs(coarse - exact).max()) if exact.size else 0.0
    return max(_MIN_ERROR, _ERROR_MARGIN * seen)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` (scores, ids) per row of a (queries, images) score matrix, best first, ties by id."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out_s, out_i = [], []
    for row, cand in zip(scores, part, strict=True):
        # Every row tying the k-th score joins, so that ties are broken by id, not by the partition's order.
        kth = row[cand].min()
        cand = np.flatnonzero(row >= kth) if np.count_nonzero(row >= kth) > k else cand
        cs, ci = row[cand], ids[cand]
        order = np.lexsort((ci, -cs))[:k]
        out_s.append(cs[order])
        out_i.append(ci[order])
    return np.stack(out_s), np.stack(out_i)
