"""The roofline record: the image tower's arithmetic, the ceiling it implies, and its store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import ConfigError
from autotune.tuner.roofline import (
    ROOFLINE_FORMAT,
    PrecisionPeak,
    Roofline,
    load_roofline,
    roofline_path,
    roofline_share,
    save_roofline,
    tower_flops,
    tower_products,
)

VIT_B32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "patch_size": 32, "image_size": 224}


def _roof(preprocess: float | None = 0.002) -> Roofline:
    """A two-core roofline with one failed precision."""
    return Roofline(
        machine_id="test-2c-8g-cpu-000000", arch="vit-768x12-p32-224/proj512", cores=2, isa=("avx512f", "amx_bf16"),
        gflop_per_image=8.8,
        peaks=(PrecisionPeak("fp32", 2, 264.0), PrecisionPeak("bf16", 2, 1760.0, kernel="matmul:brg_matmul:amx"),
               PrecisionPeak("int8", 2, None, error="RuntimeError: not supported")),
        preprocess_s_per_image_per_core=preprocess, torch_version="2.13.0", measured_at="2026-11-28T00:00:00+00:00",
    )  # fmt: skip


def test_vit_b32_arithmetic_matches_the_published_figure() -> None:
    """ViT-B/32 at 224 px: 4.4 GMACs, 8.8 GFLOP per image; 48 layer products plus the patch embedding."""
    assert tower_flops(VIT_B32) / 1e9 == pytest.approx(8.8, abs=0.05)
    products = tower_products(VIT_B32, batch=2)
    assert sum(n for *_, n in products) == 1 + 12 * 6
    assert products[0] == (2 * 49, 3 * 32 * 32, 768, 1)  # 49 patches per image, no class token
    assert products[1][0] == 2 * 50  # every token of both images


def test_ceiling_is_the_best_precision_with_preprocessing_sharing_the_cores() -> None:
    """Model ceiling = best GFLOP/s / GFLOP per image; the scan's adds preprocessing spread over the cores."""
    roof = _roof()
    assert roof.best_precision == "bf16"
    assert roof.model_ceiling_images_per_s == pytest.approx(200.0)
    assert roof.images_per_s("int8") is None and roof.images_per_s("fp32") == pytest.approx(30.0)
    assert roof.ceiling_images_per_s == pytest.approx(1 / (1 / 200 + 0.002 / 2))
    assert roof.share(roof.ceiling_images_per_s / 2) == pytest.approx(0.5)
    assert _roof(preprocess=None).ceiling_images_per_s == pytest.approx(200.0)
    data = roof.to_dict()
    assert data["ceilings_images_per_s"] == {"fp32": 30.0, "bf16": 200.0}
    assert data["best_precision"] == "bf16"


def test_no_measured_precision_is_a_one_line_error() -> None:
    """A roofline whose every precision failed has no ceiling and says so."""
    roof = Roofline(**{**_roof().__dict__, "peaks": (PrecisionPeak("fp32", 2, None, error="x"),)})
    with pytest.raises(ConfigError, match="no measured precision"):
        _ = roof.best_precision
    assert roof.ceiling_images_per_s == 0.0 and roof.share(10.0) == 0.0


def test_store_round_trip_beside_the_profiles(tmp_path: Path) -> None:
    """Saved under <machine-id>/roofline-<arch key>.json, read back equal; the share comes from the file."""
    roof = _roof()
    path = save_roofline(roof, tmp_path)
    assert path == roofline_path(roof.machine_id, roof.arch, tmp_path)
    assert path.parent == tmp_path / roof.machine_id and path.name.startswith("roofline-")
    assert load_roofline(roof.machine_id, roof.arch, tmp_path) == roof
    share = roofline_share(roof.ceiling_images_per_s / 4, roof.machine_id, roof.arch, tmp_path)
    assert share["roofline_share"] == pytest.approx(0.25)
    assert roofline_share(10.0, roof.machine_id, "another-arch", tmp_path) == {}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": ROOFLINE_FORMAT + 1}),
                                     json.dumps({"format": ROOFLINE_FORMAT, "arch": "x"})])  # fmt: skip
def test_damaged_or_other_format_files_are_not_used(tmp_path: Path, content: str) -> None:
    """A damaged, newer or incomplete file means no share is shown, never a traceback."""
    roof = _roof()
    path = roofline_path(roof.machine_id, roof.arch, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert load_roofline(roof.machine_id, roof.arch, tmp_path) is None
    assert roofline_share(50.0, roof.machine_id, roof.arch, tmp_path) == {}
