"""Image preprocessing for CLIP: the reference (CLIPImageProcessor) path and the fast producer path.

The fast path turns encoded bytes into a uint8 ``(crop, crop, 3)`` array with no float math on the
producer: libjpeg-turbo decode (simplejpeg for plain JPEGs, PIL for everything else), then an antialiased
bicubic resize of the short side and a centre crop that reproduce the reference's geometry exactly (same
output size computation, same crop offsets, same zero padding). Downscales run on torch's uint8 antialias
kernel, a port of Pillow's fixed-point resampler with shorter weights: 99.7% of values are identical to the
reference, the rest differ by one grey level, a handful in ten million by two. Upscales and no-op resizes
run through PIL itself (bit-identical); extreme aspect ratios through PIL restricted to the crop window
(within two grey levels). Normalisation to float happens later, batched, in :func:`normalize` (on the
consumer, possibly on the accelerator). EXIF orientation is not applied: the reference does not either.

Example:
    >>> spec = PreprocessSpec()
    >>> pixels = fast_preprocess(open("cat.jpg", "rb").read(), spec)  # doctest: +SKIP
    >>> normalize(torch.from_numpy(pixels)[None], spec).shape  # doctest: +SKIP
    torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.lazy import lazy_exports

if TYPE_CHECKING:
    from autotune.preprocess.decode import decode_image, reference_preprocess, to_rgb
    from autotune.preprocess.geometry import fast_preprocess, preprocess_batch_fast, resize_output_size
    from autotune.preprocess.normalization import normalize
    from autotune.preprocess.spec import (
        MAX_IMAGE_PIXELS,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        PREPROCESS_VERSION,
        PreprocessSpec,
    )

# Public name -> defining submodule. Imported on first use: the recipe (spec) needs neither torch nor PIL,
# so model facts can name a PreprocessSpec without paying for the pixel code.
_EXPORTS = {
    "MAX_IMAGE_PIXELS": "spec",
    "OPENAI_CLIP_MEAN": "spec",
    "OPENAI_CLIP_STD": "spec",
    "PREPROCESS_VERSION": "spec",
    "PreprocessSpec": "spec",
    "decode_image": "decode",
    "reference_preprocess": "decode",
    "to_rgb": "decode",
    "fast_preprocess": "geometry",
    "preprocess_batch_fast": "geometry",
    "resize_output_size": "geometry",
    "normalize": "normalization",
}

__all__ = [
    "MAX_IMAGE_PIXELS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESS_VERSION",
    "PreprocessSpec",
    "decode_image",
    "fast_preprocess",
    "normalize",
    "preprocess_batch_fast",
    "reference_preprocess",
    "resize_output_size",
    "to_rgb",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
