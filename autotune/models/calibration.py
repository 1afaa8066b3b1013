"""Calibration sets for static int8: a fixed sample of the database, preprocessed, stored by its content.

Static post-training quantisation fixes each activation's int8 range from a few batches of real inputs, so
the quantised artefact depends on *which* images calibrated it: the set is drawn from the database being
scanned (evenly spaced records, leaving out the accuracy guard's sample where the database has other
images, so that the guard does not judge a model on the images it was calibrated on), preprocessed exactly
as the engine does, and saved as ``<cache>/calibration/<digest>.npy``. The digest (of the pixels) goes into
the artefact key of the quantised model and into the embedding index's key, so another database, or a
changed one, gives another model and another index.

The parent makes the set (it has the database); replicas only read the file the digest names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autotune.atomic import atomic_path
from autotune.cache import cache_dir
from autotune.errors import BadImageError, ConfigError, DataError

if TYPE_CHECKING:
    from autotune.data.sources import ImageSource
    from autotune.preprocess import PreprocessSpec

# Images in a calibration set: ORT and NNCF calibrate on a few hundred by default; 64 evenly spaced images hold
# the activation ranges of a CLIP image tower within the guard's threshold. A small database gives one image
# in CALIBRATION_SHARE, and at least CALIBRATION_MIN (the tests' 48-image corpus calibrates on 8).
CALIBRATION_IMAGES = 64
CALIBRATION_SHARE = 8
CALIBRATION_MIN = 8

# CPU backends quantised statically: they need a calibration set (see the registry for what runs them).
STATIC_INT8_BACKENDS = ("onnx-int8s", "openvino-int8")
# The accuracy guard's default sample size (its images are left out of calibration sets; the guard reads it here).
GUARD_SAMPLE = 256


@dataclass(frozen=True)
class Calibration:
    """A stored calibration set: its file, the digest naming it, and how many images it holds."""

    path: str
    digest: str
    images: int


def needs_calibration(backend: str) -> bool:
    """Whether the CPU backend ``backend`` is quantised statically (and so needs a calibration set)."""
    return backend in STATIC_INT8_BACKENDS


def calibration_for(source: ImageSource, model_id: str, backend: str) -> str | None:
    """The calibration set's file when CPU backend ``backend`` is quantised statically, else None."""
    if not needs_calibration(backend) or model_id.startswith("fake:"):
        return None
    return calibration_set(source, model_id).path


def evenly_spaced(count: int, sample: int) -> np.ndarray:
    """Positions of ``sample`` of ``count`` records, evenly spaced, the first and the last included."""
    return np.unique(np.linspace(0, count - 1, min(sample, count)).round().astype(int))


def sample_pixels(
    source: ImageSource, sample: int, spec: PreprocessSpec, *, avoid: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fast-preprocess ``sample`` records evenly spaced over the source (undecodable ones skipped).

    ``avoid``: leave out the records an evenly spaced sample of that size takes (the guard's), where the
    source has others. Returns (uint8 pixels [N, H, W, 3], record ids, labels).
    """
    from autotune.preprocess import fast_preprocess

    records = source.records()
    if not records:
        raise DataError(f"no images to sample: {source.describe()} has no records")
    pool = np.arange(len(records))
    if avoid:
        rest = np.setdiff1d(pool, evenly_spaced(len(records), avoid))
        pool = rest if len(rest) else pool
    picks = pool[evenly_spaced(len(pool), sample)]
    pixels = np.empty((len(picks), spec.crop, spec.crop, 3), np.uint8)
    ids: list[int] = []
    labels: list[str] = []
    k = 0
    for i in picks:
        record = records[int(i)]
        try:
            fast_preprocess(source.read_bytes(record), spec, out=pixels[k])
        except (BadImageError, OSError):
            continue
        ids.append(record.id)
        if record.label is not None:
            labels.append(record.label)
        k += 1
    if k == 0:
        raise DataError(f"no image of the sample could be decoded in {source.describe()}")
    return pixels[:k], np.asarray(ids, np.int64), labels


def calibration_size(records: int) -> int:
    """Images in the calibration set of a database of ``records`` images (see CALIBRATION_IMAGES)."""
    return max(1, min(records, max(CALIBRATION_MIN, min(CALIBRATION_IMAGES, records // CALIBRATION_SHARE))))


def calibration_set(
    source: ImageSource,
    model_id: str,
    images: int | None = None,
    cache_root: Path | None = None,
    *,
    guard_sample: int | None = None,
) -> Calibration:
    """The calibration set of ``source`` for ``model_id``'s preprocessing, stored under its content digest.

    ``images`` defaults to :func:`calibration_size` of the database; the images of the accuracy guard's sample
    (``guard_sample``, default its default size) are left out where the database has others.

    Example:
        >>> cal = calibration_set(open_source("data/"), "synthetic:tiny", images=16)  # doctest: +SKIP
        >>> cal.images, len(cal.digest)  # doctest: +SKIP
        (16, 12)
    """
    from autotune.models.facts import model_facts

    if images is None:
        images = calibration_size(len(source.records()))
    if images < 1:
        raise ConfigError(f"a calibration set needs at least one image, got {images}")
    if guard_sample is None:
        guard_sample = GUARD_SAMPLE
    pixels, _ids, _labels = sample_pixels(source, images, model_facts(model_id).preprocess, avoid=guard_sample)
    return store_calibration(pixels, cache_root)


def _calibration_dir(cache_root: Path | None) -> Path:
    """Where calibration sets live: ``calibration/`` in the backends' artefact folder (``cache_root`` if given)."""
    return (cache_root if cache_root is not None else cache_dir("backends")) / "calibration"


def store_calibration(pixels: np.ndarray, cache_root: Path | None = None) -> Calibration:
    """Store uint8 [N, H, W, 3] calibration pixels under the digest of their content (once)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:12]
    folder = _calibration_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.npy"
    if not path.exists():
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, pixels)
    return Calibration(str(path), digest, int(len(pixels)))


def stored_calibration(digest: str, cache_root: Path | None = None) -> Calibration | None:
    """The calibration set stored under ``digest``, or None when its file is gone."""
    path = _calibration_dir(cache_root) / f"{digest}.npy"
    try:
        pixels = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return Calibration(str(path), digest, int(pixels.shape[0]))


def load_calibration(path: str | None, backend: str) -> tuple[np.ndarray, str]:
    """The uint8 calibration pixels a static int8 backend was given, and their digest (the file's name)."""
    if not path:
        raise ConfigError(
            f"the {backend} backend is quantised statically and needs a calibration set drawn from the database; "
            "run it through a scan, a study or the guard, which draw one"
        )
    file = Path(path)
    try:
        pixels = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"calibration set {file} cannot be read: {exc}") from None
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise ConfigError(f"calibration set {file} is not uint8 [N, H, W, 3] pixels")
    return pixels, file.stem
