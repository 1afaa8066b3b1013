"""Batch decoders: encoded JPEGs to uint8 ``(N, crop, crop, 3)`` pixels on a replica's device, behind one interface.

Where decoding runs is a search-space choice (``EngineConfig.decode``): on the producers (the CPU fast path,
:func:`autotune.preprocess.fast_preprocess`) or batched inside a replica (``decode: gpu``). A replica decodes
with :func:`decoder_for` its device: nvJPEG through ``torchvision.io.decode_jpeg(..., device="cuda")`` on a GPU
(:class:`TorchvisionGpuDecoder`), the CPU fast path on a CPU (:class:`CpuDecoder`, also the stand-in that tests
the interface where torchvision does not import beside the CPU torch). TorchCodec and nvImageCodec, the
maintained successors of torchvision's decoder, fit behind the same :class:`BatchDecoder` interface.

Images a GPU decoder cannot take (not a plain YCbCr/greyscale JPEG, an upscale, a decode error) go through the
CPU fast path one by one, so every skip keeps the CPU path's reason (``corrupt``, ``truncated``, ...).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from autotune.errors import BadImageError, ConfigError
from autotune.preprocess.decode import JPEG_MAGIC, _check_pixels
from autotune.preprocess.spec import PreprocessSpec

if TYPE_CHECKING:  # torch is imported by the decoders that run, not by whoever only plans a decode
    import torch

#: (index into the batch, the error the CPU path gave) for each image that could not be decoded.
Failures = list[tuple[int, BadImageError]]


def gpu_decodable(data: bytes) -> bool:
    """Whether nvJPEG may take these bytes: a plain (YCbCr or greyscale) JPEG whose header parses.

    Raises :class:`BadImageError` (``too-large``) for a decompression bomb, as the CPU path would. CMYK,
    progressive oddities nvJPEG refuses and anything that is not a JPEG return False: the CPU path decodes them.

    Example:
        >>> gpu_decodable(b"\\x89PNG...")
        False
    """
    if data[:3] != JPEG_MAGIC:
        return False
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # not parseable: the CPU path gives the verdict and its reason
        return False
    _check_pixels(width, height)
    return colorspace in ("YCbCr", "Gray")


class BatchDecoder(ABC):
    """Decodes a batch of encoded images into uint8 NHWC crops on ``device``, with the reference's geometry.

    Example:
        >>> dec = decoder_for("cpu")
        >>> pixels, failures = dec.decode([jpeg_bytes, b""], PreprocessSpec())  # doctest: +SKIP
        >>> tuple(pixels.shape), [(i, e.reason) for i, e in failures]  # doctest: +SKIP
        ((1, 224, 224, 3), [(1, 'empty')])
    """

    name: str = ""
    device: str = "cpu"

    @abstractmethod
    def decode(self, datas: list[bytes], spec: PreprocessSpec) -> tuple[torch.Tensor, Failures]:
        """Pixels of the images that decoded (in input order) on ``device``, and why each other one did not."""

    def warm(self, spec: PreprocessSpec) -> None:
        """Pay imports and first-call costs now (a replica does it while loading): decode one small JPEG."""
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (2 * spec.crop, 2 * spec.crop), (90, 120, 60)).save(buffer, format="JPEG")
        self.decode([buffer.getvalue()], spec)


class CpuDecoder(BatchDecoder):
    """The CPU fast path behind the batch interface (libjpeg-turbo, torch's uint8 antialias resize)."""

    name = "cpu"

    def decode(self, datas: list[bytes], spec: PreprocessSpec) -> tuple[torch.Tensor, Failures]:
        """Fast-preprocess each image; failures carry the CPU path's reasons."""
        import torch

        from autotune.preprocess.geometry import preprocess_batch_fast

        pixels, bad = preprocess_batch_fast(datas, spec)
        return torch.from_numpy(pixels), bad


class DeviceBatchDecoder(BatchDecoder):
    """A decoder that turns whole JPEGs into CHW uint8 tensors on its device, then resizes and crops there.

    Subclasses implement :meth:`decode_chw` (one library's batched decode). The rest is shared: which images the
    device may take (:func:`gpu_decodable`), the reference's geometry in torch's antialiased bicubic (or
    bilinear) in float32, rounded to uint8 (within a grey level or two of the reference, which the accuracy
    guard checks on the embeddings), and the CPU path for upscales, no-op resizes and every image the device
    refuses (identical to the reference, same skip reasons).
    """

    def __init__(self, device: str) -> None:
        """Decode onto ``device``."""
        self.device = device
        self._cpu = CpuDecoder()

    @abstractmethod
    def decode_chw(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """Each JPEG as a CHW uint8 RGB tensor on the device, None where it could not be decoded."""

    def decode(self, datas: list[bytes], spec: PreprocessSpec) -> tuple[torch.Tensor, Failures]:
        """Batched device decode, resize and crop; the CPU path for everything else."""
        import torch

        from autotune.preprocess.geometry import _TORCH_MODES

        out = torch.empty((len(datas), spec.crop, spec.crop, 3), dtype=torch.uint8, device=self.device)
        mode = _TORCH_MODES.get(spec.resample)
        dev_idx = [i for i, d in enumerate(datas) if mode and _safe_decodable(d)]
        decoded = self.decode_chw([datas[i] for i in dev_idx]) if dev_idx else []
        cpu_idx = sorted(set(range(len(datas))) - set(dev_idx))
        for i, img in zip(dev_idx, decoded, strict=True):
            if img is None or not _resize_crop(img, spec, str(mode), out[i]):
                cpu_idx.append(i)
        if not cpu_idx:
            return out, []
        cpu_idx.sort()
        pixels, bad = self._cpu.decode([datas[i] for i in cpu_idx], spec)
        failures: Failures = [(cpu_idx[j], e) for j, e in bad]
        failed = {i for i, _e in failures}
        kept = [i for i in cpu_idx if i not in failed]
        if kept:
            out[torch.tensor(kept, device=self.device)] = pixels.to(self.device)
        if not failed:
            return out, failures
        ok = [i for i in range(len(datas)) if i not in failed]
        return out[torch.tensor(ok, dtype=torch.long, device=self.device)], failures


class TorchvisionGpuDecoder(DeviceBatchDecoder):
    """nvJPEG through ``torchvision.io.decode_jpeg(list, device="cuda")`` (torchvision is imported lazily)."""

    name = "torchvision"

    def __init__(self, device: str) -> None:
        """Import torchvision (it is optional, and absent beside the CPU torch)."""
        reason = gpu_decoder_unavailable()
        if reason:
            raise ConfigError(reason)
        import torchvision.io

        super().__init__(device)
        self._io = torchvision.io

    def decode_chw(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """One batched nvJPEG call; one by one after a failure, to find the image that failed."""
        import torch

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        mode = self._io.ImageReadMode.RGB
        try:
            return list(self._io.decode_jpeg(tensors, mode=mode, device=self.device))
        except Exception:  # one bad image fails the whole batched call
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(self._io.decode_jpeg(t, mode=mode, device=self.device))
                except Exception:
                    out.append(None)
            return out


def _safe_decodable(data: bytes) -> bool:
    """:func:`gpu_decodable`, with a bomb left to the CPU path (which skips it with its reason)."""
    try:
        return gpu_decodable(data)
    except BadImageError:
        return False


def _resize_crop(img: torch.Tensor, spec: PreprocessSpec, mode: str, out: torch.Tensor) -> bool:
    """Resize a CHW uint8 device image as the reference does and centre-crop it into ``out`` (HWC); False where
    the reference would upscale or copy (the CPU path then takes it, bit-identical)."""
    import torch
    import torch.nn.functional as F

    from autotune.preprocess.geometry import _crop_into, resize_output_size

    _c, height, width = img.shape
    new_h, new_w = resize_output_size(int(height), int(width), spec.shortest_edge)
    if not (new_h < height and new_w < width):
        return False
    resized = F.interpolate(img[None].float(), size=(new_h, new_w), mode=mode, antialias=True)
    hwc = resized[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    _crop_into(hwc, new_h, new_w, spec, out)  # type: ignore[arg-type]  # tensors slice like arrays here
    return True


def gpu_decoder_unavailable() -> str | None:
    """None when the GPU decoder can be built here, else one line saying why not (cheap: no import).

    Example:
        >>> gpu_decoder_unavailable() is None or "torchvision" in gpu_decoder_unavailable()
        True
    """
    if importlib.util.find_spec("torchvision") is None:
        return "decode: gpu needs the 'torchvision' package (with nvJPEG), which is not installed"
    return None


def decoder_for(device: str) -> BatchDecoder:
    """The batch decoder a replica on ``device`` uses: nvJPEG on a CUDA device, the CPU fast path elsewhere.

    Example:
        >>> decoder_for("cpu").name
        'cpu'
    """
    if device.startswith("cuda"):
        return TorchvisionGpuDecoder(device)
    return CpuDecoder()
