"""Synthetic image corpora: an iNaturalist-like JPEG collection and a set of deliberately broken files.

The corpus is built from the real photographs that scikit-image ships (so it works offline), each image a
random crop, flip, rescale and colour jitter of one of them. Every image has its own RNG seeded by
``(seed, index)``, which keeps parallel generation byte-for-byte deterministic.
"""

from __future__ import annotations

import functools
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageStat

from autotune.data.layouts import write_hf_disk, write_inat, write_shards
from autotune.errors import DataError
from autotune.progress import ProgressFactory, Task, silent

#: Species-like label -> ``skimage.data`` loader; distinct genus names help a small text model.
SOURCE_PHOTOS: dict[str, str] = {
    "Homo sapiens": "astronaut",
    "Murus lateritius": "brick",
    "Photographus tripodis": "camera",
    "Felis catus": "chelsea",
    "Horologium murale": "clock",
    "Coffea arabica": "coffee",
    "Nummus aereus": "coins",
    "Poa pratensis": "grass",
    "Glarea fluviatilis": "gravel",
    "Galaxias profunda": "hubble_deep_field",
    "Histologia tincta": "immunohistochemistry",
    "Luna craterosa": "moon",
    "Pagina impressa": "page",
    "Retina oculi": "retina",
    "Rocheta volans": "rocket",
    "Scriptura manualis": "text",
    "Motocyclus stereoscopicus": "stereo_motorcycle",
}

#: Labels in the order used to assign source photos: image ``i`` shows ``LABELS[i % len(LABELS)]``.
LABELS: list[str] = sorted(SOURCE_PHOTOS)

#: Shapes ``make_dataset`` writes the corpus in: image files, WebDataset shards, an iNaturalist split, save_to_disk.
FORMATS = ("files", "webdataset", "inat", "hf")
LONG_SIDE = 500
METADATA_NAME = "metadata.json"
_PARALLEL_THRESHOLD = 200


@functools.cache
def _source_photo(label: str) -> Image.Image:
    """Load one source photograph as RGB, once per process."""
    import skimage.data

    pixels = getattr(skimage.data, SOURCE_PHOTOS[label])()
    if isinstance(pixels, tuple):  # stereo_motorcycle returns (left, right, disparity)
        pixels = pixels[0]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return image.convert("RGB")


def _colour_matrix(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a colour jitter; return ``(m, k)`` such that ``out = m @ rgb + k * mean_grey``."""
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    hue = rng.uniform(-0.05, 0.05) * 2 * math.pi  # radians of rotation in the YIQ chroma plane
    # A few percent of per-channel gain: the colour cast that makes grayscale sources come out tinted.
    tint = rng.uniform(0.93, 1.07, size=3)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = math.cos(hue), math.sin(hue)
    # Saturation scales chroma (I, Q) and hue rotates it; luma (Y), hence the mean grey, is left alone.
    chroma = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]]) @ np.diag(
        [1.0, saturation, saturation]
    )
    m = np.diag(tint) @ (np.linalg.inv(to_yiq) @ chroma @ to_yiq) * (brightness * contrast)
    # Contrast pivots on the (brightened) mean grey level: that part is an offset per channel.
    k = tint * (1.0 - contrast) * brightness
    return m, k


def _render(label: str, rng: np.random.Generator) -> Image.Image:
    """Random crop, flip, rescale to a 500 px long side and colour jitter of one source photo."""
    source = _source_photo(label)
    width, height = source.size
    area = rng.uniform(0.3, 1.0) * width * height
    aspect = (width / height) * math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
    crop_w = min(width, max(8, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(8, round(math.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    if crop_w >= crop_h:
        size = (LONG_SIDE, max(1, round(LONG_SIDE * crop_h / crop_w)))
    else:
        size = (max(1, round(LONG_SIDE * crop_w / crop_h)), LONG_SIDE)
    # One resampling pass straight from the crop box: PIL's resize is antialiased when shrinking.
    resized = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    m, k = _colour_matrix(rng)
    red, green, blue = ImageStat.Stat(resized).mean
    offset = k * (0.299 * red + 0.587 * green + 0.114 * blue)
    # PIL applies the affine colour map (and the clipping to 0..255) in one C pass.
    matrix = tuple(float(v) for c in range(3) for v in (*m[c], offset[c]))
    return resized.convert("RGB", matrix)


def _image_path(out: Path, index: int) -> Path:
    """Where image ``index`` lives: OUT/<label>/<index:07d>.jpg."""
    return out / LABELS[index % len(LABELS)] / f"{index:07d}.jpg"


def _write_image(index: int, out: Path, seed: int) -> int:
    """Generate and write image ``index``; return its size in bytes."""
    rng = np.random.default_rng([seed, index])
    label = LABELS[index % len(LABELS)]
    image = _render(label, rng)
    quality = int(rng.integers(75, 96))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    data = buffer.getvalue()
    _image_path(out, index).write_bytes(data)
    return len(data)


def _write_chunk(bounds: tuple[int, int], out: Path, seed: int) -> tuple[int, int]:
    """Worker task: write images ``start..stop-1``; return (count, bytes)."""
    start, stop = bounds
    return stop - start, sum(_write_image(i, out, seed) for i in range(start, stop))


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """Split ``range(n)`` into ``(start, stop)`` chunks."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _write_all(out: Path, n: int, seed: int, workers: int | None, task: Task) -> int:
    """Write images ``0..n-1`` (in worker processes from 200 images up); return the bytes written."""
    workers = max(1, workers or os.cpu_count() or 1)
    total_bytes = 0
    if workers > 1 and n >= _PARALLEL_THRESHOLD:
        # Small chunks keep the bar moving and the workers balanced; spawn never forks a threaded parent.
        chunk = max(1, min(64, n // (workers * 8)))
        work = functools.partial(_write_chunk, out=out, seed=seed)
        with mp.get_context("spawn").Pool(workers) as pool:
            for count, nbytes in pool.imap_unordered(work, _chunks(n, chunk)):
                total_bytes += nbytes
                task.advance(count)
    else:
        for index in range(n):
            total_bytes += _write_image(index, out, seed)
            task.advance(1)
    return total_bytes


def make_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    workers: int | None = None,
    *,
    format: str = "files",
    shard_images: int = 1000,
) -> dict[str, Any]:
    """Write an iNaturalist-2021-train-mini-like corpus of ``n`` JPEGs under ``out`` and return a summary.

    Image ``i`` is ``out/<label>/<i:07d>.jpg`` with label ``LABELS[i % 17]``: a random crop (30-100% of the
    area), flip, rescale to a 500 px long side and colour jitter of that label's source photograph, saved at
    JPEG quality 75-95. The same ``seed`` gives byte-identical files whatever the number of ``workers``
    (default: all cores, used from 200 images up). ``out/metadata.json`` records how the corpus was made.
    The folder loads as a plain image folder and as a Hugging Face imagefolder (labels = folder names).
    ``progress`` (e.g. :func:`autotune.console.bar`) gets one ``make-dataset`` task; None reports nothing.

    ``format`` writes the same images (the same bytes) in another shape (:data:`FORMATS`): ``webdataset``,
    tar shards of ``shard_images`` samples directly in ``out`` (``<index>.jpg`` beside ``.json`` with label and
    caption, and ``.txt``); ``inat``, ``out`` as an iNaturalist split (taxonomy-named class folders,
    ``<out name>.json`` with categories, names and common names); ``hf``, a ``save_to_disk`` dataset. Each
    ``out`` is a usable ``--dataset``.

    Raises :class:`DataError` when ``out`` exists and is not an empty folder, or for an unknown format.

    Example:
        >>> summary = make_dataset(Path("/tmp/corpus"), n=34, seed=0)  # doctest: +SKIP
        >>> summary["images"], summary["labels"]  # doctest: +SKIP
        (34, 17)
    """
    out = Path(out)
    if n < 1:
        raise DataError(f"make-dataset needs at least one image (n={n})")
    if format not in FORMATS:
        raise DataError(f"unknown --format {format!r} (formats: {', '.join(FORMATS)})")
    if shard_images < 1:
        raise DataError(f"--shard-images must be at least 1, got {shard_images}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"refusing to write into {out}: it exists and is not an empty folder")
    if format in ("webdataset", "hf"):
        # The images are generated as files first, beside ``out``, then packed; the files go afterwards.
        files = out.parent / f".{out.name}.files"
        shutil.rmtree(files, ignore_errors=True)
        try:
            summary = make_dataset(files, n, seed, progress, workers)
            out.mkdir(parents=True, exist_ok=True)
            extra = write_shards(files, out, shard_images) if format == "webdataset" else write_hf_disk(files, out)
            (out / METADATA_NAME).write_text((files / METADATA_NAME).read_text(encoding="utf-8"), encoding="utf-8")
        finally:
            shutil.rmtree(files, ignore_errors=True)
        return {**summary, "out": str(out), "format": format, **extra}
    labels = LABELS[: min(n, len(LABELS))]
    for label in labels:
        (out / label).mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    task = (progress or silent)("make-dataset", n)
    try:
        total_bytes = _write_all(out, n, seed, workers, task)
    finally:
        task.close()
    seconds = time.perf_counter() - started

    meta = {"generator": "autotune.make_dataset", "n": n, "seed": seed, "labels": labels}
    (out / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    extra = write_inat(out, labels) if format == "inat" else {}
    return {
        "out": str(out),
        "format": format,
        "images": n,
        "labels": len(labels),
        "bytes": total_bytes,
        "mb": round(total_bytes / 1e6, 2),
        "seconds": round(seconds, 2),
        "images_per_s": round(n / max(seconds, 1e-6), 1),
        **extra,
    }


# ------------------------------------------------------------------------------------------- bad images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _bomb_png(side: int = 30000) -> bytes:
    """A genuine 1-bit ``side`` x ``side`` PNG: 900 Mpixels, ~110 KB on disk because every row is zero."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    row_bytes = 1 + (side + 7) // 8  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block_rows = 1000
    parts = []
    for start in range(0, side, block_rows):
        parts.append(compressor.compress(bytes(row_bytes * min(block_rows, side - start))))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def write_bad_images(folder: Path) -> dict[str, str]:
    """Write a set of problem image files into ``folder``; return ``{filename: expected_reason}``.

    Reasons are :class:`autotune.errors.BadImageError` tags (``corrupt``, ``truncated``, ``empty``,
    ``too-large``) or ``ok`` for files that are odd but must decode (PNG with a .jpg name, CMYK JPEG, 16-bit
    grayscale, LA, palette GIF, RGBA). The whole set is about 130 KB and always the same bytes.

    Example:
        >>> expected = write_bad_images(Path("/tmp/bad"))  # doctest: +SKIP
        >>> expected["empty.jpg"]  # doctest: +SKIP
        'empty'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    base = _render("Felis catus", np.random.default_rng([1234, 0])).resize((160, 120))

    def encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
        """Encode ``image`` in memory."""
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    jpeg = encoded(base, "JPEG", quality=90)
    noise = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    gradient = (np.arange(120 * 160, dtype=np.uint32).reshape(120, 160) * 3).astype(np.uint16)
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1)))
    rgba = base.copy()
    rgba.putalpha(alpha)
    files: dict[str, tuple[bytes, str]] = {
        # No JPEG marker at all: with one, decoders report the garbage as a truncated file instead.
        "corrupt.jpg": (noise, "corrupt"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "empty.jpg": (b"", "empty"),
        "png_named.jpg": (encoded(base, "PNG"), "ok"),
        "cmyk.jpg": (encoded(base.convert("CMYK"), "JPEG", quality=90), "ok"),
        "gray16.png": (encoded(Image.fromarray(gradient), "PNG"), "ok"),
        "la.png": (encoded(base.convert("LA"), "PNG"), "ok"),
        "palette.gif": (encoded(base.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), "ok"),
        "rgba.png": (encoded(rgba, "PNG"), "ok"),
        "bomb.png": (_bomb_png(), "too-large"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}
