"""Fixtures of the engine's tests: a database with broken images beside the small corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotune.data import write_bad_images


@pytest.fixture(scope="module")
def db(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small corpus plus the broken-image set (the local engine skips 4 of them, with reasons)."""
    folder = tmp_path_factory.mktemp("ray-db") / "db"
    shutil.copytree(small_dataset, folder)
    write_bad_images(folder / "bad")
    return folder
