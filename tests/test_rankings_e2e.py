"""Rankings end to end with a trained model: the test that catches ranking bugs.

A small CLIP is trained once per session on a generated corpus (``trained_model_dir``); queries
``"a photo of {label}"`` must then retrieve mostly that label's images among held-out images (another seed),
both through the plain model code and through the scan engine. Deliberately broken paths (channels
swapped, normalisation skipped, ids shifted) must fail the same check, which shows the test has teeth.

Other test modules reuse the model through :func:`trained_model_dir` / :func:`heldout_dir` (each builds
once per session under pytest's base temp folder), e.g.::

    from tests.test_rankings_e2e import trained_model_dir

    @pytest.fixture(scope="session")
    def trained_model(tmp_path_factory):
        return str(trained_model_dir(tmp_path_factory))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autotune.data import LABELS, open_source
from autotune.engine import EngineConfig, embed_queries, run_scan
from autotune.models import encode_texts, image_tower, load_clip
from autotune.preprocess import PreprocessSpec, fast_preprocess, normalize

TOP_K = 9
# A label's query must put at least this many of its own images in its top 9.
MIN_HITS = 6
# Labels checked one by one: colourful photos (which a channel swap ruins) and near-greyscale ones.
CHECK_LABELS = [
    "Felis catus",
    "Homo sapiens",
    "Coffea arabica",
    "Rocheta volans",
    "Retina oculi",
    "Motocyclus stereoscopicus",
    "Nummus aereus",
    "Photographus tripodis",
    "Galaxias profunda",
]


# ---------------------------------------------------------------------------------------------- helpers

def _pixels(folder: Path, spec: PreprocessSpec) -> tuple[np.ndarray, list[str]]:
    """Fast-preprocessed uint8 pixels of every image of a corpus, with their labels, in record order."""
    source = open_source(folder)
    records = source.records()
    pixels = np.stack([fast_preprocess(source.read_bytes(r), spec) for r in records])
    return pixels, [str(r.label) for r in records]


def embed_pixels(tower: torch.nn.Module, pixels: np.ndarray, spec: PreprocessSpec, raw: bool = False) -> np.ndarray:
    """Image embeddings of uint8 NHWC pixels, as a scan computes them (``raw``: skip the normalisation)."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(pixels), 32):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + 32]))
            x = batch.permute(0, 3, 1, 2).float() / 255.0 if raw else normalize(batch, spec)
            chunks.append(tower(x).numpy())
    return np.concatenate(chunks)


def hits_at_k(scores: np.ndarray, image_labels: list[str], labels: list[str], k: int = TOP_K) -> dict[str, int]:
    """For each query row (one per label), how many of its top-``k`` images carry that label."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {label: sum(image_labels[i] == label for i in row) for label, row in zip(labels, top, strict=True)}


@pytest.fixture(scope="module")
def plain(trained_model: str, heldout: Path) -> dict[str, Any]:
    """The plain model code's view of the held-out set: pixels, labels, tower, queries, embeddings, hits."""
    loaded = load_clip(trained_model)
    spec = PreprocessSpec.from_processor(loaded.processor)
    pixels, image_labels = _pixels(heldout, spec)
    tower = image_tower(loaded)
    queries = encode_texts(loaded, [f"a photo of {label}" for label in LABELS]).numpy()
    embeddings = embed_pixels(tower, pixels, spec)
    return {
        "spec": spec,
        "pixels": pixels,
        "image_labels": image_labels,
        "tower": tower,
        "queries": queries,
        "embeddings": embeddings,
        "hits": hits_at_k(queries @ embeddings.T, image_labels, LABELS),
    }


def _precision(hits: dict[str, int]) -> float:
    """Precision@9 over the checked labels."""
    return sum(hits[label] for label in CHECK_LABELS) / (TOP_K * len(CHECK_LABELS))


# ------------------------------------------------------------------------------------------------ tests


def test_model_code_ranks_each_label_first(plain: dict[str, Any]) -> None:
    """load_clip + fast preprocessing + image_tower + encode_texts: each checked label finds its own images."""
    hits = plain["hits"]
    for label in CHECK_LABELS:
        assert hits[label] >= MIN_HITS, f"{label}: {hits[label]}/{TOP_K} own images in its top {TOP_K}"
    assert np.mean(list(hits.values())) / TOP_K >= 0.75, hits


def test_engine_ranks_each_label_first(trained_model: str, heldout: Path, plain: dict[str, Any]) -> None:
    """The scan engine (producer + CPU replica + exact top-k) returns ids whose records carry the label."""
    source = open_source(heldout)
    texts = [f"a photo of {label}" for label in CHECK_LABELS]
    queries = embed_queries(trained_model, texts)
    config = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=16)
    result = run_scan(source, trained_model, config, queries=queries, top_k=TOP_K)
    assert result.images == len(source) and not result.skipped
    labels_by_id = {r.id: r.label for r in source.records()}
    for q, label in enumerate(CHECK_LABELS):
        ids = [i for i, _ in result.hits(q)]
        assert len(ids) == TOP_K
        found = sum(labels_by_id[i] == label for i in ids)
        assert found >= MIN_HITS, f"{label}: engine found {found}/{TOP_K} ({[labels_by_id[i] for i in ids]})"
        # Same model, same pixels: the engine agrees with the plain path up to near-ties.
        assert abs(found - plain["hits"][label]) <= 1, (label, found, plain["hits"][label])


@pytest.mark.parametrize("bug", ["bgr", "unnormalised", "ids-shifted"])
def test_broken_paths_fail_the_check(plain: dict[str, Any], bug: str) -> None:
    """The check has teeth: a deliberately broken path clearly loses precision and fails some label."""
    queries, image_labels = plain["queries"], plain["image_labels"]
    if bug == "bgr":  # RGB -> BGR, the classic OpenCV-decoder slip
        emb = embed_pixels(plain["tower"], plain["pixels"][..., ::-1], plain["spec"])
        broken = hits_at_k(queries @ emb.T, image_labels, LABELS)
    elif bug == "unnormalised":  # x / 255 fed without the CLIP mean/std
        emb = embed_pixels(plain["tower"], plain["pixels"], plain["spec"], raw=True)
        broken = hits_at_k(queries @ emb.T, image_labels, LABELS)
    else:  # embeddings paired with ids off by one batch of 16
        shifted = image_labels[16:] + image_labels[:16]
        broken = hits_at_k(queries @ plain["embeddings"].T, shifted, LABELS)
    good_p, broken_p = _precision(plain["hits"]), _precision(broken)
    assert broken_p <= good_p - 0.2, f"{bug}: precision {broken_p:.2f} vs {good_p:.2f} ({broken})"
    assert any(broken[label] < MIN_HITS for label in CHECK_LABELS), f"{bug} would pass the check: {broken}"


def test_index_ranks_each_label_first(trained_model: str, heldout: Path, tmp_path: Path) -> None:
    """The retrieval path (engine scan into the embedding index, then an index query) keeps the rankings."""
    from autotune.retrieval import retrieve

    texts = [f"a photo of {label}" for label in CHECK_LABELS]
    config = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=16)
    result = retrieve(texts, dataset=str(heldout), model=trained_model, config=config, index_dir=tmp_path / "idx")
    again = retrieve(texts, dataset=str(heldout), model=trained_model, config=config, index_dir=tmp_path / "idx")
    assert result.mode == "index-new" and again.mode == "index"
    for label, hits in zip(CHECK_LABELS, again.hits, strict=True):
        assert sum(h.label == label for h in hits) >= MIN_HITS, label
