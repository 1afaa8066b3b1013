"""Batch decoders: the interface, the CPU decoder, and the device decoder's logic on a CPU stand-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autotune.data import write_bad_images
from autotune.preprocess import PreprocessSpec, preprocess_batch_fast
from autotune.preprocess.decoders import (
    CpuDecoder,
    DeviceBatchDecoder,
    decoder_for,
    gpu_decodable,
    gpu_decoder_unavailable,
)


class StandInDecoder(DeviceBatchDecoder):
    """The device decoder's shared logic with simplejpeg in nvJPEG's place, on the CPU (torchvision does not
    import beside the CPU torch here). Every third JPEG is refused, as nvJPEG refuses what it cannot take."""

    name = "stand-in"

    def __init__(self) -> None:
        super().__init__("cpu")
        self.calls: list[int] = []

    def decode_chw(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        import simplejpeg

        self.calls.append(len(datas))
        out: list[torch.Tensor | None] = []
        for i, data in enumerate(datas):
            try:
                hwc = simplejpeg.decode_jpeg(data, colorspace="RGB")
            except ValueError:
                out.append(None)
                continue
            out.append(None if i % 3 == 2 else torch.from_numpy(hwc).permute(2, 0, 1).contiguous())
        return out


@pytest.fixture(scope="module")
def mixed(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[str]]:
    """Eight corpus JPEGs with the bad-image set in between, and each file's expected outcome."""
    folder = tmp_path_factory.mktemp("bad")
    expected = write_bad_images(folder)
    good = sorted(small_dataset.rglob("*.jpg"))[:8]
    datas = [p.read_bytes() for p in good]
    names = ["ok"] * len(good)
    for name, why in sorted(expected.items()):
        datas.insert(3, (folder / name).read_bytes())
        names.insert(3, why)
    return datas, names


def test_cpu_decoder_is_the_fast_path(mixed: tuple[list[bytes], list[str]]) -> None:
    datas, _ = mixed
    spec = PreprocessSpec()
    pixels, failures = CpuDecoder().decode(datas, spec)
    ref, bad = preprocess_batch_fast(datas, spec)
    assert np.array_equal(pixels.numpy(), ref)
    assert [(i, e.reason) for i, e in failures] == [(i, e.reason) for i, e in bad]
    assert decoder_for("cpu").name == "cpu"


def test_device_decoder_matches_the_fast_path_and_keeps_its_skip_reasons(
    mixed: tuple[list[bytes], list[str]],
) -> None:
    datas, names = mixed
    spec = PreprocessSpec()
    decoder = StandInDecoder()
    pixels, failures = decoder.decode(datas, spec)
    ref, bad = preprocess_batch_fast(datas, spec)
    # Same images kept, in the same order, with the CPU path's reasons for the rest.
    assert [(i, e.reason) for i, e in failures] == [(i, e.reason) for i, e in bad]
    assert {names[i] for i, _e in failures} <= {"corrupt", "truncated", "empty", "too-large"}
    assert pixels.shape == ref.shape and pixels.dtype == torch.uint8
    # Only plain JPEGs went to the device decoder, in one batched call.
    assert decoder.calls == [sum(1 for d in datas if gpu_decodable_or_false(d))]
    # Float bicubic instead of Pillow's fixed point: a grey level or two, never a different picture.
    diff = np.abs(pixels.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 3
    assert diff.mean() < 0.5


def gpu_decodable_or_false(data: bytes) -> bool:
    """:func:`gpu_decodable`, a bomb counted as not decodable (it raises there)."""
    try:
        return gpu_decodable(data)
    except Exception:
        return False


def test_gpu_decodable_takes_plain_jpegs_only(mixed: tuple[list[bytes], list[str]]) -> None:
    datas, _ = mixed
    assert gpu_decodable(datas[0])
    assert not gpu_decodable(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    assert not gpu_decodable(b"")


def test_gpu_decoder_without_torchvision_is_one_line() -> None:
    reason = gpu_decoder_unavailable()
    if reason is None:
        pytest.skip("torchvision is installed here")
    from autotune.errors import ConfigError

    assert "torchvision" in reason
    with pytest.raises(ConfigError, match="torchvision"):
        decoder_for("cuda:0")


@pytest.mark.gpu
def test_nvjpeg_matches_the_fast_path(mixed: tuple[list[bytes], list[str]]) -> None:
    datas, _ = mixed
    spec = PreprocessSpec()
    pixels, failures = decoder_for("cuda:0").decode(datas, spec)
    ref, bad = preprocess_batch_fast(datas, spec)
    assert [(i, e.reason) for i, e in failures] == [(i, e.reason) for i, e in bad]
    assert pixels.device.type == "cuda"
    diff = np.abs(pixels.cpu().numpy().astype(int) - ref.astype(int))
    # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a few levels on top of the resize.
    assert diff.mean() < 2.0
