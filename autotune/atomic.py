"""Atomic file writes: every file the project reads back goes through here.

A write goes to a unique temporary name in the same folder, is fsynced, renamed over the final name, and the
folder is fsynced, so a reader (or a run resumed after a crash or a full disk) sees either the old file or
the whole new one, never a torn one. Folder artefacts (a saved model) get the same treatment from
:func:`atomic_dir`: built in a temporary sibling folder, every file fsynced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError

TMP_MARK = ".tmp-"  # every temporary name contains this, so leftovers of a killed writer can be recognised


class DiskFullError(AutotuneError):
    """The disk filled up while writing; whatever was committed before is intact."""


def temporary_name(path: Path) -> Path:
    """A unique hidden temporary path beside ``path`` (same folder, so the rename is atomic).

    The name ends with ``path``'s own suffix: writers that infer the format from the extension (``onnx.save``)
    or append one when it is missing (``np.save`` adds ``.npy``) then write exactly the path they were given.

    Example:
        >>> temporary_name(Path("out/emb.npy")).name.startswith(".emb.npy.tmp-")
        True
        >>> temporary_name(Path("out/emb.npy")).suffix
        '.npy'
    """
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename itself) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. some network file systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk (the rename that publishes it must not overtake its contents)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then every folder's entries, deepest first."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            entry = Path(root, name)
            if not entry.is_symlink():
                fsync_file(entry)
        fsync_dir(Path(root))


def raise_if_disk_full(exc: OSError, path: Path) -> None:
    """Turn ENOSPC / EDQUOT into one readable :class:`DiskFullError`; other errors pass through."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            f"no space left on the device while writing {path}: free some space and run again "
            "(everything committed before is kept)"
        ) from exc


def atomic_path(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    For writers that want a file name (``np.save``, ``torch.save``, safetensors, pyarrow). On any error the
    temporary file is removed and ``path`` is untouched; a full disk is one :class:`DiskFullError` line.

    Example:
        >>> with atomic_path("out.npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    return _published(Path(path), folder=False)


def atomic_dir(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a new empty temporary folder; on success its files are fsynced and it is renamed to ``path``.

    ``path`` may be missing or an empty folder (replaced); a non-empty one makes the rename fail with
    ``OSError``, which the caller handles (typically: another process published first). On any error the
    temporary folder is removed; a full disk is one :class:`DiskFullError` line.

    Example:
        >>> with atomic_dir("models/mine") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    return _published(Path(path), folder=True)


@contextlib.contextmanager
def _published(final: Path, *, folder: bool) -> Iterator[Path]:
    """A temporary name beside ``final`` (a new folder with ``folder``), fsynced and renamed to it on success,
    removed on any error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        if folder:
            fsync_tree(tmp)
            os.rename(tmp, final)  # onto an empty folder at most: a published one makes it fail
        else:
            if tmp.is_file():
                fsync_file(tmp)
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise_if_disk_full(exc, final)
        raise
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    final = Path(path)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def remove_leftovers(folder: Path) -> int:
    """Delete temporary files and folders a killed writer left in ``folder`` (only names this module makes).

    Call it only where no other writer can be at work in ``folder`` (e.g. under the folder's writer lock):
    a live writer's temporary file looks the same.
    """
    removed = 0
    for tmp in folder.glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed += 1
    return removed
