"""The index's query paths: the float16 pass with an exact re-rank answers exactly what the exact scan does."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.index import IndexMatrix, top_k


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rerank_equals_exact_on_random_vectors() -> None:
    rng = np.random.default_rng(3)
    emb = _unit(rng, 20_000, 64).astype(np.float16)
    ids = rng.permutation(40_000)[:20_000]
    fast, exact = IndexMatrix(ids, emb), IndexMatrix(ids, emb, "exact")
    queries = _unit(rng, 25, 64)
    fs, fi = fast.search(queries, 9)
    es, ei = exact.search(queries, 9)
    assert (fi == ei).all()
    np.testing.assert_allclose(fs, es, rtol=0, atol=1e-6)  # re-ranked scores are the exact products
    assert fast.stats.fast == 25 and fast.stats.exact == 0  # answered by the fast path, proven each time
    # One query at a time (the float16 pass; batches take the bfloat16 pass where the CPU has one): the same.
    one = np.concatenate([fast.search(q[None, :], 9)[1] for q in queries])
    assert (one == ei).all()


def test_near_ties_fall_back_to_the_exact_scan() -> None:
    # 300 copies of each of 100 vectors: every score is tied 300 times, more than the candidates kept, so the
    # float16 pass cannot prove its top 9; the answer must still be the exact one, ties broken by id.
    rng = np.random.default_rng(5)
    base = _unit(rng, 100, 32).astype(np.float16)
    emb = np.repeat(base, 300, axis=0)
    ids = np.arange(len(emb))
    fast = IndexMatrix(ids, emb)
    queries = _unit(rng, 4, 32)
    _s, got = fast.search(queries, 9)
    _s, want = IndexMatrix(ids, emb, "exact").search(queries, 9)
    assert (got == want).all() and fast.stats.exact == 4
    best = np.argmax(base.astype(np.float32) @ queries[0])
    assert got[0].tolist() == list(range(300 * best, 300 * best + 9))  # the lowest ids of the tied copies


def test_top_k_breaks_ties_by_id() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1, 0.5]], dtype=np.float32)
    ids = np.array([60, 10, 50, 20, 30, 40])
    s, i = top_k(scores, ids, 3)
    assert i.tolist() == [[10, 20, 40]] and s.tolist()[0][0] == pytest.approx(0.9)


def test_small_and_float32_indexes() -> None:
    rng = np.random.default_rng(1)
    emb = _unit(rng, 50, 16)  # fewer rows than candidates: the exact scan
    m = IndexMatrix(np.arange(50), emb)
    s, i = m.search(emb[:2], 60)
    assert i.shape == (2, 50) and i[0, 0] == 0 and i[1, 0] == 1
    big = _unit(rng, 5_000, 16)  # stored as float32: a float16 copy for the first pass, same answers
    _s, a = IndexMatrix(np.arange(5_000), big).search(big[:5], 9)
    _s, b = IndexMatrix(np.arange(5_000), big, "exact").search(big[:5], 9)
    assert (a == b).all()
    with pytest.raises(ValueError, match="scan must be one of"):
        IndexMatrix(np.arange(3), emb[:3], "fastest")
