"""Fast preprocessing vs the CLIPImageProcessor reference: geometry, pixels, embeddings, modes, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotune.errors import BadImageError
from autotune.preprocess import (
    PreprocessSpec,
    decode,
    decode_image,
    fast_preprocess,
    normalize,
    preprocess_batch_fast,
    reference_preprocess,
    resize_output_size,
)

# Measured on generated corpora: 99.7% of values identical, the rest 1 grey level off, a few per ten million
# (torch's shorter fixed-point weights) 2 off. Upscales and odd shapes go through PIL and are exact.
MAX_GREY = 2


def _grey(ref: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A reference array (3, H, W) normalised float -> (H, W, 3) integer grey levels."""
    mean = np.asarray(spec.mean, np.float64)[:, None, None]
    std = np.asarray(spec.std, np.float64)[:, None, None]
    return np.rint((ref * std + mean) * 255.0).astype(np.int16).transpose(1, 2, 0)


def _grey_diff(data: bytes, processor, spec: PreprocessSpec) -> np.ndarray:  # type: ignore[no-untyped-def]
    """|fast - reference| in grey levels for one encoded image, after checking both geometries."""
    ref = reference_preprocess(data, processor)
    fast = fast_preprocess(data, spec)
    assert ref.shape == (3, spec.crop, spec.crop) and ref.dtype == np.float32
    assert fast.shape == (spec.crop, spec.crop, 3) and fast.dtype == np.uint8
    return np.abs(_grey(ref, spec) - fast.astype(np.int16))


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic photo-like RGB image: smooth gradients plus texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / max(width, 1) * 6.0 + seed),
            128 + 100 * np.cos(y / max(height, 1) * 5.0),
            128 + 80 * np.sin((x + y) / 37.0),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 12, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """Encode an image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- the corpus


def test_fast_matches_reference_on_corpus(small_dataset: Path, tiny_model: str) -> None:
    """Same geometry, grey levels within MAX_GREY (almost all identical), embeddings cosine >= 0.999."""
    from autotune.data import open_source
    from autotune.models import image_tower, load_clip

    loaded = load_clip(tiny_model)
    spec = PreprocessSpec.from_processor(loaded.processor)
    source = open_source(small_dataset)
    datas = [source.read_bytes(r) for r in source.records()]
    assert len(datas) == 48
    refs, fasts = [], []
    diffs = []
    for data in datas:
        diffs.append(_grey_diff(data, loaded.processor, spec))
        refs.append(reference_preprocess(data, loaded.processor))
        fasts.append(fast_preprocess(data, spec))
    diff = np.stack(diffs)
    assert diff.max() <= MAX_GREY
    assert (diff == 0).mean() > 0.99
    assert (diff >= 2).sum() <= 50  # a handful in 7 million values at most
    # The normalised pixels agree to one grey level in normalised units, nearly everywhere.
    fast_norm = normalize(torch.from_numpy(np.stack(fasts)), spec)
    pix = (fast_norm - torch.from_numpy(np.stack(refs))).abs()
    assert float(pix.max()) <= MAX_GREY / 255 / min(spec.std) + 1e-5
    assert float(pix.mean()) < 1e-3
    tower = image_tower(loaded)
    with torch.inference_mode():
        a = tower(torch.from_numpy(np.stack(refs)))
        b = tower(fast_norm)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) >= 0.999


# ----------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("height", "width"),
    [(375, 500), (500, 375), (289, 500), (300, 301), (1000, 1000), (333, 777), (601, 450)],
)
def test_resize_output_size_is_transformers(height: int, width: int) -> None:
    """The output size computation is the reference's own, to the pixel."""
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    image = np.zeros((3, height, width), np.uint8)
    expected = get_resize_output_image_size(
        image, size=224, default_to_square=False, input_data_format=ChannelDimension.FIRST
    )
    assert resize_output_size(height, width, 224) == tuple(expected)


@pytest.mark.parametrize(
    ("width", "height"),
    [(1000, 50), (50, 1000), (1, 1), (224, 224), (225, 300), (223, 223), (3, 300), (10000, 3), (6000, 400)],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_odd_sizes(width: int, height: int, fmt: str, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Very wide, very tall, tiny, exact-size and near-size images: reference geometry, close pixels."""
    data = _encode(_photo(width, height, seed=width + height), fmt)
    diff = _grey_diff(data, processor, spec)
    assert diff.max() <= MAX_GREY
    new_h, new_w = resize_output_size(height, width, spec.shortest_edge)
    if new_h >= height and new_w >= width:
        # Upscales and no-op resizes run through PIL exactly as the reference does: bit-identical.
        assert diff.max() == 0


def test_shortest_edge_below_crop_pads_like_reference(spec: PreprocessSpec) -> None:
    """shortest_edge < crop: the reference zero-pads around the resized image; so do we."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 200}, crop_size=224)
    small = PreprocessSpec.from_processor(proc)
    assert (small.shortest_edge, small.crop) == (200, 224)
    for width, height in [(300, 201), (301, 150), (5, 3), (400, 400)]:
        data = _encode(_photo(width, height), "PNG")
        diff = _grey_diff(data, proc, small)
        assert diff.max() <= 1
        fast = fast_preprocess(data, small)
        assert fast[0].max() == 0 or fast[:, 0].max() == 0  # a zero band on at least one side


# -------------------------------------------------------------------------------- modes and formats


def _rgba(width: int = 320, height: int = 240) -> Image.Image:
    """A photo with a horizontal alpha ramp."""
    image = _photo(width, height, seed=3).convert("RGBA")
    image.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))))
    return image


_MODES = {
    "L": lambda: _photo(320, 240).convert("L"),
    "LA": lambda: _rgba().convert("LA"),
    "P": lambda: _photo(320, 240).convert("P", palette=Image.Palette.ADAPTIVE),
    "RGBA": _rgba,
    "CMYK": lambda: _photo(320, 240).convert("CMYK"),
    "1": lambda: _photo(320, 240).convert("1"),
}


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "JPEG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("LA", "WEBP"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("P", "BMP"),
        ("RGBA", "PNG"),
        ("RGBA", "WEBP"),
        ("RGBA", "TIFF"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("1", "PNG"),
        ("1", "BMP"),
    ],
)
def test_modes_and_formats(mode: str, fmt: str, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Every PIL mode and the common formats: the fast path decodes and matches the reference."""
    data = _encode(_MODES[mode](), fmt)
    assert decode_image(data).mode == "RGB"
    assert _grey_diff(data, processor, spec).max() <= MAX_GREY


def test_palette_with_transparency_composites_on_white(processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """A P image with a transparent index (PNG tRNS, GIF) is composited onto white, as the reference does."""
    image = _photo(320, 240).convert("P", palette=Image.Palette.ADAPTIVE)
    for fmt in ("PNG", "GIF"):
        data = _encode(image, fmt, transparency=0)
        assert Image.open(io.BytesIO(data)).info.get("transparency") is not None
        assert _grey_diff(data, processor, spec).max() <= MAX_GREY


def test_gif_first_frame(processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """An animated GIF is read as its first frame by both paths."""
    frames = [_photo(200, 260, seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    data = buffer.getvalue()
    assert _grey_diff(data, processor, spec).max() <= MAX_GREY
    first = fast_preprocess(_encode(frames[0], "GIF"), spec)
    assert np.abs(fast_preprocess(data, spec).astype(int) - first).max() <= 1


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(fmt: str, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """I;16: the reference clips at 255 (near-white garbage); we scale v/257 and document the divergence."""
    ramp = np.tile(np.linspace(0, 65535, 300), (240, 1)).astype(np.uint16)
    data = _encode(Image.fromarray(ramp), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = np.asarray(decode_image(data))
    assert np.abs(decoded[..., 0].astype(int) - np.floor(ramp / 257 + 0.5)).max() == 0
    fast = fast_preprocess(data, spec)
    assert fast.min() < 40 and fast.max() > 215  # the ramp survives (the centre crop trims its ends)
    # The reference's own view of the same file is saturated...
    assert (_grey(reference_preprocess(data, processor), spec) == 255).mean() > 0.9
    # ...while on the 8-bit image our scaling produces, the two paths agree as usual.
    eight_bit = _encode(Image.fromarray(decoded[..., 0], "L"), "PNG")
    ref8 = _grey(reference_preprocess(eight_bit, processor), spec)
    assert np.abs(ref8 - fast.astype(np.int16)).max() <= MAX_GREY


def test_decode_image_modes_all_rgb() -> None:
    """decode_image returns a loaded RGB image for every mode, alpha composited onto white."""
    for make in _MODES.values():
        assert decode_image(_encode(make(), "TIFF")).mode == "RGB"
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert decode_image(_encode(transparent, "PNG")).getpixel((3, 3)) == (255, 255, 255)


# ------------------------------------------------------------------------------------------ bad files


def _assert_reason(data: bytes, reason: str, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Every entry point raises BadImageError with ``reason`` (never another exception type)."""
    for call in (
        lambda: decode_image(data),
        lambda: fast_preprocess(data, spec),
        lambda: fast_preprocess(data, spec, draft=True),
        lambda: reference_preprocess(data, processor),
    ):
        with pytest.raises(BadImageError) as info:
            call()
        assert info.value.reason == reason, (reason, info.value)


def test_write_bad_images_reasons(tmp_path: Path, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """The data module's problem files: each fails with its expected reason, or decodes when 'ok'."""
    from autotune.data import write_bad_images

    expected = write_bad_images(tmp_path)
    assert {"empty", "corrupt", "truncated", "too-large", "ok"} <= set(expected.values())
    for name, reason in expected.items():
        data = (tmp_path / name).read_bytes()
        if reason == "ok":
            assert fast_preprocess(data, spec).shape == (224, 224, 3), name
            reference_preprocess(data, processor)
        else:
            _assert_reason(data, reason, processor, spec)


def test_crafted_bad_files(processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Empty, garbage, truncated JPEG/PNG/GIF: the right tag from every path."""
    jpeg = _encode(_photo(400, 300), "JPEG", quality=90)
    progressive = _encode(_photo(400, 300), "JPEG", quality=90, progressive=True)
    _assert_reason(b"", "empty", processor, spec)
    _assert_reason(b"this is not an image at all" * 10, "corrupt", processor, spec)
    _assert_reason(jpeg[: len(jpeg) // 2], "truncated", processor, spec)
    _assert_reason(progressive[: len(progressive) // 2], "truncated", processor, spec)
    _assert_reason(jpeg[:-2], "truncated", processor, spec)  # only the end-of-image marker missing
    png = _encode(_photo(400, 300), "PNG")
    _assert_reason(png[: len(png) // 2], "truncated", processor, spec)
    gif = _encode(_photo(400, 300).convert("P"), "GIF")
    _assert_reason(gif[: len(gif) // 2], "truncated", processor, spec)


def test_every_truncation_is_a_bad_image_error(spec: PreprocessSpec) -> None:
    """Cut anywhere (or with garbage spliced in), a file decodes or raises BadImageError, nothing else."""
    rng = np.random.default_rng(0)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"):
        data = _encode(_photo(120, 90).convert("P") if fmt == "GIF" else _photo(120, 90), fmt)
        cuts = sorted({1, 2, 3, 10, 30, len(data) - 1, *rng.integers(1, len(data), 12).tolist()})
        for cut in cuts:
            for variant in (data[:cut], data[:cut] + bytes(rng.integers(0, 256, 64, dtype=np.uint8))):
                try:
                    fast_preprocess(variant, spec)
                except BadImageError as exc:
                    assert exc.reason in {"corrupt", "truncated", "empty", "too-large", "unsupported"}


def test_too_large_on_every_path(monkeypatch: pytest.MonkeyPatch, processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Above MAX_IMAGE_PIXELS: too-large from the header, on the simplejpeg path and the PIL path alike."""
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 100 * 100)  # the limit decoding enforces
    for fmt in ("JPEG", "PNG"):
        _assert_reason(_encode(_photo(101, 100), fmt), "too-large", processor, spec)
        fast_preprocess(_encode(_photo(100, 100), fmt), spec)  # at the limit: fine


# ---------------------------------------------------------------------------------------- fast path API


def test_out_is_written_in_place(spec: PreprocessSpec) -> None:
    """``out=`` receives the pixels and is returned itself; a view into a batch works the same."""
    data = _encode(_photo(500, 375), "JPEG")
    expected = fast_preprocess(data, spec)
    buf = np.full((224, 224, 3), 7, np.uint8)
    assert fast_preprocess(data, spec, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    batch = np.zeros((4, 224, 224, 3), np.uint8)
    view = batch[2]
    assert fast_preprocess(data, spec, out=view) is view
    np.testing.assert_array_equal(batch[2], expected)
    assert not batch[[0, 1, 3]].any()
    # Padded output (shortest_edge < crop) clears what a previous image left in the buffer.
    small = PreprocessSpec(shortest_edge=200)
    buf[...] = 9
    fast_preprocess(data, small, out=buf)
    assert buf[:12].max() == 0
    with pytest.raises(ValueError):
        fast_preprocess(data, spec, out=np.empty((224, 224, 3), np.float32))
    with pytest.raises(ValueError):
        fast_preprocess(data, spec, out=np.empty((225, 224, 3), np.uint8))


def test_preprocess_batch_fast_skips_bad(spec: PreprocessSpec) -> None:
    """Good images are stacked in order; bad ones are reported with their index and reason."""
    good = [_encode(_photo(300 + 10 * i, 260), "JPEG") for i in range(3)]
    datas = [good[0], b"", good[1], b"garbage" * 20, good[2]]
    pixels, bad = preprocess_batch_fast(datas, spec)
    assert pixels.shape == (3, 224, 224, 3) and pixels.dtype == np.uint8
    assert [(i, e.reason) for i, e in bad] == [(1, "empty"), (3, "corrupt")]
    for k, data in enumerate(good):
        np.testing.assert_array_equal(pixels[k], fast_preprocess(data, spec))


def test_draft_decode_is_close_and_smaller(spec: PreprocessSpec) -> None:
    """draft=True decodes a large JPEG at reduced scale (short side >= 2x shortest_edge), still close."""
    data = _encode(_photo(2400, 1800), "JPEG", quality=90)
    drafted = decode_image(data, draft=True, spec=spec)
    assert drafted.size == (600, 450)  # 1/4 scale: the largest that keeps the short side >= 448
    assert decode_image(data).size == (2400, 1800)
    assert decode_image(data, draft=True).size == (2400, 1800)  # no spec: no draft
    exact = fast_preprocess(data, spec).astype(int)
    approx = fast_preprocess(data, spec, draft=True).astype(int)
    assert np.abs(exact - approx).mean() < 1.0
    assert np.abs(exact - approx).max() <= 16


# ----------------------------------------------------------------------------------------- normalise


def test_normalize_matches_reference_pixels(processor, spec: PreprocessSpec) -> None:  # type: ignore[no-untyped-def]
    """Normalising the reference's own uint8 grey levels reproduces its float output."""
    ref = reference_preprocess(_encode(_photo(500, 375), "PNG"), processor)
    grey = torch.from_numpy(_grey(ref, spec).astype(np.uint8))[None]
    assert float((normalize(grey, spec)[0] - torch.from_numpy(ref)).abs().max()) < 1e-5


def test_bilinear_spec_matches_reference(spec: PreprocessSpec) -> None:
    """A bilinear processor is followed by the torch bilinear kernel, within MAX_GREY of the reference."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(resample=2)
    bilinear = PreprocessSpec.from_processor(proc)
    assert bilinear.resample == 2
    assert _grey_diff(_encode(_photo(500, 375), "JPEG"), proc, bilinear).max() <= MAX_GREY
