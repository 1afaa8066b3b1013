"""Shared fixtures: a small generated corpus and offline models, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network, and keep everything they build out of the user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point the model/backends cache at a per-session folder (unless the caller pinned one)."""
    if "AUTOTUNE_TEST_CACHE" in os.environ:
        path = Path(os.environ["AUTOTUNE_TEST_CACHE"])
    else:
        path = tmp_path_factory.mktemp("autotune-cache")
    os.environ["AUTOTUNE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48-image generated corpus (all labels present), shared by the whole session."""
    from autotune.data import make_dataset

    out = tmp_path_factory.mktemp("data") / "small"
    make_dataset(out, n=48, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(_isolated_cache: Path) -> str:
    """Model id of the tiny offline stand-in (random weights, built into the session cache)."""
    return "synthetic:tiny"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests when CUDA is absent."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing means no GPU either
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
