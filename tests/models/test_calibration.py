"""Static int8: calibration sets drawn from the database, keyed by content, and the backends built on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from autotune.data import open_source
from autotune.errors import ConfigError
from autotune.models.backends import BackendSpec, backend_unavailable, build_backend
from autotune.models.calibration import (
    calibration_set,
    calibration_size,
    load_calibration,
    sample_pixels,
    stored_calibration,
)
from autotune.models.facts import model_facts


def test_calibration_size_is_a_share_of_the_database_within_bounds() -> None:
    assert [calibration_size(n) for n in (3, 48, 200, 2000, 500_000)] == [3, 8, 25, 64, 64]


def test_calibration_set_is_drawn_from_the_database_and_keyed_by_content(
    small_dataset: Path, tiny_model: str, tmp_path: Path
) -> None:
    """Same database, same set and digest; another database, another digest; the guard's sample is avoided."""
    source = open_source(small_dataset)
    first = calibration_set(source, tiny_model, cache_root=tmp_path, guard_sample=8)
    again = calibration_set(source, tiny_model, cache_root=tmp_path, guard_sample=8)
    assert first == again and first.images == 8 and Path(first.path).name == f"{first.digest}.npy"
    pixels, digest = load_calibration(first.path, "onnx-int8s")
    assert digest == first.digest and pixels.shape[0] == 8 and pixels.dtype == np.uint8
    spec = model_facts(tiny_model).preprocess
    _, cal_ids, _ = sample_pixels(source, 8, spec, avoid=8)
    _, guard_ids, _ = sample_pixels(source, 8, spec)
    assert len(cal_ids) == 8 and not set(cal_ids.tolist()) & set(guard_ids.tolist())
    assert np.array_equal(pixels, sample_pixels(source, 8, spec, avoid=8)[0])
    other = tmp_path / "other"
    shutil.copytree(small_dataset, other)
    images = sorted(p for p in other.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for p in images[1:]:  # every image becomes the first one: the set drawn changes whatever it picks
        shutil.copy(images[0], p)
    assert calibration_set(open_source(other), tiny_model, cache_root=tmp_path, guard_sample=8).digest != first.digest
    assert stored_calibration(first.digest, tmp_path) == first
    assert stored_calibration("0" * 12, tmp_path) is None


def test_a_static_backend_without_calibration_is_one_line(tiny_model: str, tmp_path: Path) -> None:
    if backend_unavailable("onnx-int8s"):
        pytest.skip("onnxruntime missing")
    with pytest.raises(ConfigError, match="needs a calibration set drawn from the database"):
        build_backend(BackendSpec(model_id=tiny_model, backend="onnx-int8s"), cache_root=tmp_path)


@pytest.mark.parametrize("name", ["onnx-int8s", "openvino-int8"])
def test_the_calibration_set_keys_the_quantised_artefact(
    name: str, small_dataset: Path, tiny_model: str, tmp_path: Path
) -> None:
    """Another calibration set gives another artefact; the same one is a cache hit with the same embeddings."""
    reason = backend_unavailable(name)
    if reason:
        pytest.skip(reason)
    source = open_source(small_dataset)
    spec_px = model_facts(tiny_model).preprocess
    pixels, _, _ = sample_pixels(source, 4, spec_px)
    cal = calibration_set(source, tiny_model, cache_root=tmp_path)
    first = build_backend(BackendSpec(model_id=tiny_model, backend=name, calibration=cal.path), cache_root=tmp_path)
    again = build_backend(BackendSpec(model_id=tiny_model, backend=name, calibration=cal.path), cache_root=tmp_path)
    assert not first.cache_hit and again.cache_hit and again.artefact == first.artefact
    np.testing.assert_allclose(again.embed(pixels), first.embed(pixels), atol=1e-5)
    other = calibration_set(source, tiny_model, images=4, cache_root=tmp_path)
    third = build_backend(BackendSpec(model_id=tiny_model, backend=name, calibration=other.path), cache_root=tmp_path)
    assert third.artefact != first.artefact and not third.cache_hit


def test_openvino_int8_quantises_activations_symmetrically(
    small_dataset: Path, tiny_model: str, tmp_path: Path
) -> None:
    """NNCF's performance preset: every activation quantiser is symmetric (no zero point for the int8 products to
    correct), the recipe that ran faster than the transformer default at the same agreement."""
    reason = backend_unavailable("openvino-int8")
    if reason:
        pytest.skip(reason)
    import openvino as ov

    cal = calibration_set(open_source(small_dataset), tiny_model, cache_root=tmp_path)
    backend = build_backend(BackendSpec(model_id=tiny_model, backend="openvino-int8", calibration=cal.path),
                            cache_root=tmp_path)  # fmt: skip
    ranges = []
    for op in ov.Core().read_model(backend.artefact).get_ordered_ops():
        source = op.input_value(0).get_node() if op.get_type_name() == "FakeQuantize" else None
        if source is not None and source.get_type_name() != "Constant":  # an activation, not a weight
            low, high = (float(op.input_value(i).get_node().get_data().min()) for i in (1, 2))
            ranges.append((low, high))
    assert ranges, "no activation quantisers in the int8 model"
    # Symmetric over 256 levels: the low end is -high * 128/127 (or the range starts at 0 for a non-negative input).
    assert all(low == 0 or abs(low + high * 128 / 127) <= 1e-3 * abs(high) for low, high in ranges), ranges[:5]
