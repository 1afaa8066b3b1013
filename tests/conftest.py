"""Shared fixtures: a small generated corpus and offline models, built once per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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
    make_dataset(out, n=48, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_model(_isolated_cache: Path) -> str:
    """Model id of the tiny offline stand-in (random weights, built into the session cache)."""
    return "synthetic:tiny"


# ---------------------------------------------- a small CLIP trained offline (rankings that mean something)
# The quick model: 340 training images (20 per label), 110 steps of 64 (about 35 s; every label still ranks
# first). One thread: on an idle machine two are about 1.5x faster, but next to other busy processes (the
# other xdist worker) two contending OpenMP threads were measured 4x slower than one (1.4 s against 0.33 s a
# step), enough to hit the test timeout.
TRAIN_N = 340
TRAIN_SEED = 7
QUICK_STEPS = 110
QUICK_BATCH = 64
QUICK_THREADS = 1
# Held-out images: another seed, 10 per label, so a label's top 9 can be all its own.
HELDOUT_N = 170
HELDOUT_SEED = 4242


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where session-wide builds go: under xdist, the folder all workers' temporary folders share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_once(folder: Path, done: Callable[[Path], bool], build: Callable[[Path], object]) -> Path:
    """Build ``folder`` unless a complete one is there (a leftover incomplete one is rebuilt).

    A file lock makes one xdist worker build it while another that needs it waits, instead of both training.
    """
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if done(folder):
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        build(folder)
    assert done(folder), f"building {folder} left it incomplete"
    return folder


def heldout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out corpus (``HELDOUT_N`` images, seed ``HELDOUT_SEED``), generated once per session."""
    return _build_once(
        _shared_root(tmp_path_factory) / "rankings-heldout",
        lambda p: (p / "metadata.json").is_file(),
        lambda p: _make_dataset(p, n=HELDOUT_N, seed=HELDOUT_SEED),
    )


def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick trained model (a plain CLIP checkpoint folder), trained once per session."""
    base = _shared_root(tmp_path_factory) / "rankings-trained"
    corpus = _build_once(
        base / "train",
        lambda p: (p / "metadata.json").is_file(),
        lambda p: _make_dataset(p, n=TRAIN_N, seed=TRAIN_SEED),
    )
    return _build_once(
        base / "model",
        lambda p: (p / "autotune_trained.json").is_file(),
        lambda p: _train_model(corpus, p, seed=0, steps=QUICK_STEPS, batch_size=QUICK_BATCH, threads=QUICK_THREADS),
    )


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path (as a model id) of the quick trained model."""
    return str(trained_model_dir(tmp_path_factory))


@pytest.fixture(scope="session")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out corpus folder."""
    return heldout_dir(tmp_path_factory)



def _make_dataset(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Import late: collecting tests must not pay for the generator's imports."""
    from autotune.data import make_dataset

    return make_dataset(*args, **kwargs)


def _train_model(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Import late, like :func:`_make_dataset`."""
    from autotune.models.train import train_model

    return train_model(*args, **kwargs)


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
