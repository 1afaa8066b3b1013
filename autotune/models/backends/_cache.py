"""The on-disk artefact cache: keys of weights and library versions, and build-once-under-a-file-lock.

Artefacts live under ``cache_dir("backends")`` in files named by a key of the model's ``weights_hash``, the
artefact kind and the versions of the libraries that produce them. Files are written through
:func:`autotune.atomic.atomic_path` (temporary name, fsync, rename). One process builds an artefact while the
others wait on a :class:`filelock.FileLock` (in ``.locks/`` beside the artefacts; the kernel releases it if the
builder dies) and then load what it built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from autotune.atomic import atomic_path
from autotune.cache import cache_dir

# Bump when an artefact's content changes for the same inputs (export options, quantisation settings...).
ARTEFACT_FORMAT = "1"
# A consumer that finds another process building an artefact waits this long before building its own copy.
BUILD_WAIT_S = 900.0
# Build locks live here, under the artefact folder: lock files stay after release (deleting one while another
# process waits on it would let two builders in), and a folder of their own keeps them out of artefact listings.
LOCKS_DIR = ".locks"

# The libraries whose versions change each artefact (and so are part of its key).
# The ONNX export is still made from transformers' CLIPModel; the int8 state and compiled kernels come from
# autotune's own tower (TOWER_FORMAT in their keys), which transformers does not touch.
_ARTEFACT_LIBS: dict[str, tuple[str, ...]] = {
    "onnx": ("torch", "transformers"),
    "onnx-text": ("torch", "transformers"),
    "onnx-int8": ("torch", "transformers", "onnx", "onnxruntime"),
    "int8": ("torch",),
    "compile": ("torch",),
    "openvino": ("openvino",),
    "onnx-int8s": ("torch", "transformers", "onnx", "onnxruntime"),
    "openvino-int8": ("torch", "transformers", "openvino", "nncf"),
}

log = logging.getLogger(__name__)


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out).

    Example:
        >>> library_versions("numpy", "no-such-distribution").keys() == {"numpy"}  # doctest: +SKIP
        True
    """
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def artefact_key(weights_hash: str, artefact: str, **extra: object) -> str:
    """16 hex chars naming one artefact: weights, artefact kind, library versions, format, ``extra`` options.

    ``extra`` carries what else shapes it (e.g. ``batch`` for compiled kernels); the ONNX export has a dynamic
    batch axis, so its key has no batch size.

    Example:
        >>> artefact_key("0123456789abcdef", "onnx") == artefact_key("0123456789abcdef", "onnx")
        True
        >>> artefact_key("0123456789abcdef", "onnx") != artefact_key("fedcba9876543210", "onnx")
        True
    """
    record = {
        "weights_hash": weights_hash,
        "artefact": artefact,
        "format": ARTEFACT_FORMAT,
        "versions": library_versions(*_ARTEFACT_LIBS.get(artefact, ("torch",))),
        "extra": {k: extra[k] for k in sorted(extra)},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def artefact_path(root: Path, weights_hash: str, artefact: str, suffix: str, **extra: object) -> Path:
    """``<root>/<artefact>-<weights_hash>-<key><suffix>``: where an artefact lives in the cache.

    Example:
        >>> artefact_path(Path("/c"), "0123456789abcdef", "onnx", ".onnx").name.startswith("onnx-0123")
        True
    """
    return root / f"{artefact}-{weights_hash}-{artefact_key(weights_hash, artefact, **extra)}{suffix}"


def lock_path(path: Path) -> Path:
    """The build lock of the artefact at ``path``: ``<folder>/.locks/<name>.lock``.

    Example:
        >>> lock_path(Path("/c/onnx-ab.onnx"))
        PosixPath('/c/.locks/onnx-ab.onnx.lock')
    """
    return path.parent / LOCKS_DIR / f"{path.name}.lock"


def materialise(
    path: Path, build: Callable[[Path], object], *, wait_s: float = BUILD_WAIT_S, poll_s: float = 0.05
) -> tuple[bool, float]:
    """Make sure the artefact at ``path`` exists; return ``(cache_hit, seconds_waited)``.

    ``build(tmp)`` writes the artefact to a temporary path next to ``path``, which is then fsynced and renamed
    into place (readers see no file or a whole file). One process builds while the others wait on its file
    lock, then find the artefact and build nothing (a hit). A builder that dies releases the lock with its
    process. A waiter that has waited ``wait_s`` (a build hung, or far slower than any seen) logs a warning and
    builds its own copy without the lock: both renames carry the same content, so whichever lands last is fine.

    Example:
        >>> materialise(Path("/tmp/demo.bin"), lambda tmp: tmp.write_bytes(b"x"))  # doctest: +SKIP
        (False, 0.0)
    """
    if path.exists():
        return True, 0.0
    # Imported here, past the cache-hit return: a replica whose artefact is there never pays for it (0.1 s).
    from filelock import FileLock, Timeout

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(lock))
    start = time.monotonic()
    try:
        file_lock.acquire(timeout=wait_s, poll_interval=poll_s)
        held = True
    except Timeout:
        log.warning("building %s after waiting %.0f s for another process to build it", path.name, wait_s)
        held = False
    waited = time.monotonic() - start
    try:
        if path.exists():  # built by the process we waited for
            return True, waited
        with atomic_path(path) as tmp:
            build(tmp)
        return False, waited
    finally:
        if held:
            file_lock.release()


def backends_cache(root: Path | None = None) -> Path:
    """The artefact folder: ``root`` if given (created), else ``cache_dir("backends")``.

    Example:
        >>> backends_cache().name  # doctest: +SKIP
        'backends'
    """
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        return root
    return cache_dir("backends")
