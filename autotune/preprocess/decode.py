"""Decoding: encoded bytes to RGB pixels as the reference converts them, every failure a tagged BadImageError."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from autotune.errors import BadImageError
from autotune.preprocess.spec import MAX_IMAGE_PIXELS, PreprocessSpec

# PIL only warns between 1x and 2x its limit; a bomb must fail our decode, never just print a warning.
# Installed once at import (catch_warnings per call would not be thread-safe); decode_image also checks
# the pixel count itself, so the limit holds even where something resets the warning filters.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

#: How every JPEG starts: only these go to simplejpeg.
JPEG_MAGIC = b"\xff\xd8\xff"
# draft=True only lets libjpeg's DCT scaling shrink an image while its short side stays at least this many
# times shortest_edge, so the bicubic resize still downsamples 2x or more (measured: mean error < 0.5 grey).
_DRAFT_MIN_RATIO = 2


def _check_pixels(width: int, height: int) -> None:
    """Refuse decompression bombs from the header, before any pixel is decoded."""
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImageError(
            "too-large", f"{width}x{height} = {width * height} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
        )


def _map_error(exc: Exception) -> BadImageError:
    """Turn whatever PIL raised while opening or decoding into a tagged BadImageError."""
    msg = str(exc)
    low = msg.lower()
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return BadImageError("too-large", msg)
    if isinstance(exc, UnidentifiedImageError) or "cannot identify image file" in low:
        return BadImageError("corrupt", "cannot identify image file (not an image, or an unknown format)")
    if isinstance(exc, MemoryError):
        return BadImageError("too-large", f"out of memory while decoding: {msg}")
    if "truncated" in low or "broken data stream" in low or isinstance(exc, EOFError):
        return BadImageError("truncated", msg)
    if "not available" in low or "unsupported" in low or "not supported" in low:
        return BadImageError("unsupported", msg)
    return BadImageError("corrupt", f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    """Scale a 16-bit (I;16*) or 32-bit integer (I) greyscale image to 8-bit L: round(v / 257), clipped.

    The reference (PIL's ``convert("RGB")`` inside CLIPImageProcessor) *clips* these values at 255, so any
    real 16-bit image comes out almost entirely white. We deliberately diverge: 0..65535 maps linearly onto
    0..255 (65535 / 257 = 255 exactly), which is what the picture looks like. Mode ``I`` is read as 16-bit
    data, which is how PIL has historically opened 16-bit PNGs.
    """
    # astype reads big-endian I;16B correctly; int64 leaves room for the clip of 32-bit I values.
    a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB as CLIPImageProcessor's convert_rgb does (except 16-bit, see below).

    Alpha (an ``A`` band, or a ``transparency`` entry of P/L/RGB images) is composited onto white, everything
    else goes through PIL's ``convert("RGB")`` (CMYK, YCbCr, 1, L, P...). 16-bit greyscale is scaled, not
    clipped: see :func:`_sixteen_bit_to_l`.

    Example:
        >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))
        (255, 255, 255)
    """
    if im.mode == "RGB":
        return im
    if im.mode == "I" or im.mode.startswith("I;16"):
        im = _sixteen_bit_to_l(im)
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _draft_request(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The smallest (width, height) a DCT-scaled JPEG decode may produce under the draft accuracy rule."""
    floor_short = _DRAFT_MIN_RATIO * spec.shortest_edge
    scale = floor_short / min(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def decode_image(data: bytes, *, draft: bool = False, spec: PreprocessSpec | None = None) -> Image.Image:
    """Decode image bytes into a fully loaded RGB PIL image, or raise :class:`BadImageError`.

    Every PIL format (JPEG, PNG, WebP, GIF first frame, BMP, TIFF...) and mode (1, L, LA, P with or without
    transparency, RGBA, CMYK, I;16, I...) is accepted; conversion follows the reference (:func:`to_rgb`).
    Errors: empty bytes -> ``empty``; not an image -> ``corrupt``; cut short -> ``truncated``; more than
    :data:`MAX_IMAGE_PIXELS` -> ``too-large``; anything else -> ``corrupt`` with the detail. The image is
    loaded here, so no decode error can surface later.

    ``draft=True`` (JPEG only, needs ``spec``) lets libjpeg decode at 1/2, 1/4 or 1/8 scale while the short
    side stays >= 2 x ``spec.shortest_edge``: several times faster on large photos, but not bit-faithful
    (a few grey levels at worst after the resize), so it is off by default.

    Example:
        >>> decode_image(open("cat.png", "rb").read()).mode  # doctest: +SKIP
        'RGB'
    """
    if not data:
        raise BadImageError("empty", "zero-byte file")
    try:
        im = Image.open(io.BytesIO(data))
        _check_pixels(*im.size)
        if draft and spec is not None and im.format == "JPEG":
            im.draft("RGB", _draft_request(*im.size, spec))
        im.load()
        return to_rgb(im)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises anything from OSError to struct.error on bad data
        raise _map_error(exc) from exc


def decode_jpeg_array(data: bytes) -> np.ndarray | None:
    """Decode a plain (YCbCr or greyscale) JPEG straight to an HxWx3 uint8 array, or None to use PIL instead.

    simplejpeg drives libjpeg-turbo's TurboJPEG API with the same accurate DCT and fancy upsampling as
    PIL, so the pixels are identical, ~30% faster, and without PIL's 4-bytes-per-pixel storage. Anything
    unusual (CMYK, a decode warning such as truncation) returns None: PIL then decodes it, or raises the
    error the reference would see.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # not parseable here: let PIL decide what is wrong with it
        return None
    if colorspace not in ("YCbCr", "Gray"):
        return None
    _check_pixels(width, height)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception:  # libjpeg warnings (truncation, junk bytes) are errors here; PIL gives the verdict
        return None



def reference_preprocess(data: bytes, processor: Any) -> np.ndarray:
    """The baseline: ``Image.open`` then the processor's own call, float32 ``(3, crop, crop)``.

    Exactly what a model card does (the processor converts to RGB itself, so the reference stays the
    reference, 16-bit clipping included). Bad input raises the same :class:`BadImageError` as
    :func:`decode_image`.

    Example:
        >>> from transformers import CLIPImageProcessor  # doctest: +SKIP
        >>> reference_preprocess(open("cat.jpg", "rb").read(), CLIPImageProcessor()).shape  # doctest: +SKIP
        (3, 224, 224)
    """
    ip = getattr(processor, "image_processor", processor)
    try:
        im = Image.open(io.BytesIO(data))
        _check_pixels(*im.size)
        im.load()
    except Exception:
        decode_image(data)  # raises the tagged error for the same bytes
        raise  # pragma: no cover - decode_image accepted what PIL refused a moment ago
    return ip(images=im, return_tensors="np")["pixel_values"][0]
