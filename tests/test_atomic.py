"""Atomic writes: a failed write keeps the old file and leaves no temporary behind; a full disk is one line."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune import atomic
from autotune.atomic import (
    DiskFullError,
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_leftovers,
    temporary_name,
)


class _FillsUp:
    """A file whose ``write`` stores half the data, then fails like a full disk."""

    def __init__(self, real: Any) -> None:
        """Wrap an open binary file."""
        self.real = real

    def __enter__(self) -> _FillsUp:
        """Use as the file object of a ``with open(...)`` block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the real file."""
        self.real.close()

    def write(self, data: bytes) -> int:
        """Write the first half, then raise ENOSPC."""
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_round_trip(tmp_path: Path) -> None:
    """Bytes, text and JSON land whole under the final name, parent folders created, nothing else left."""
    assert atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write_text(tmp_path / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert json.loads(atomic_write_json(tmp_path / "j.json", {"k": [1, 2]}).read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "t.txt"]


def test_write_that_raises_midway_keeps_the_old_file(tmp_path: Path) -> None:
    """The writer fails after writing part of the new content: the old file is intact, no temporary left."""
    target = atomic_write_text(tmp_path / "profile.json", "old")
    with pytest.raises(RuntimeError, match="midway"), atomic_path(target) as tmp:
        tmp.write_text("new but only ha")
        raise RuntimeError("serialiser failed midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the write itself: one-line DiskFullError naming the file; old content kept, no temporary."""
    target = atomic_write_text(tmp_path / "meta.json", "old")
    real_open = open
    monkeypatch.setattr(atomic, "open", lambda path, mode="r": _FillsUp(real_open(path, mode)), raising=False)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(target, "a much longer new content that will not fit")
    message = str(info.value)
    assert "\n" not in message and "no space left" in message and str(target) in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_from_any_writer(tmp_path: Path, code: int) -> None:
    """A writer given a path (np.save, torch.save...) that hits a full disk or quota: DiskFullError too."""
    with pytest.raises(DiskFullError), atomic_path(tmp_path / "x.npy"):
        raise OSError(code, "full")
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    """Only a full disk is translated: a permission error stays what it is."""
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x.bin"):
        raise PermissionError(errno.EACCES, "denied")


def test_temporary_name_keeps_the_suffix(tmp_path: Path) -> None:
    """np.save appends .npy to a name without it: the temporary keeps the suffix, so it writes the right file."""
    assert temporary_name(tmp_path / "emb.npy").suffix == ".npy"
    assert temporary_name(tmp_path / "emb.npy") != temporary_name(tmp_path / "emb.npy")
    with atomic_path(tmp_path / "emb.npy") as tmp:
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npy"]


def test_remove_leftovers_removes_only_temporary_names(tmp_path: Path) -> None:
    """A killed writer's temporary file and folder go; the data, other hidden files and look-alikes stay."""
    keep = ["data.json", ".hidden", "notes.tmp", "report.tmp-1", ".locks"]
    for name in keep[:-1]:
        (tmp_path / name).write_text("x")
    (tmp_path / ".locks").mkdir()
    temporary_name(tmp_path / "data.json").write_text("half")
    folder = temporary_name(tmp_path / "model")
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"half")
    assert remove_leftovers(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_leftovers(tmp_path / "missing") == 0


def test_atomic_dir_publishes_a_whole_folder(tmp_path: Path) -> None:
    """Files written into the temporary folder appear together under the final name."""
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
        assert not (tmp_path / "model").exists()
    assert (tmp_path / "model" / "sub" / "w.bin").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_dir_fsyncs_every_file_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file's data reaches the disk before the rename that publishes the folder."""
    events: list[str] = []
    monkeypatch.setattr(atomic, "fsync_file", lambda path: events.append(f"fsync {Path(path).name}"))
    real_rename = atomic.os.rename

    def rename(src: Path, dst: Path) -> None:
        """Record the rename, then do it."""
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "b.bin").write_bytes(b"b")
    assert sorted(events[:2]) == ["fsync a.bin", "fsync b.bin"] and events[2:] == ["rename"]


def test_atomic_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    """A build that fails, or a final folder that is already full: no temporary folder left, target intact."""
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "half.bin").write_bytes(b"h")
        raise RuntimeError("save failed")
    assert list(tmp_path.iterdir()) == []
    winner = tmp_path / "model"
    winner.mkdir()
    (winner / "done").write_text("winner")
    with pytest.raises(OSError), atomic_dir(winner) as tmp:
        (tmp / "done").write_text("loser")
    assert (winner / "done").read_text() == "winner" and [p.name for p in tmp_path.iterdir()] == ["model"]
