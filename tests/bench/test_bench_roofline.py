"""bench roofline: measured on the tiny model, stored beside the profiles, and used by the ladder's figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.bench.ladder import _add_roofline_shares
from autotune.bench.roofline import _product_chains, measure_openvino_int8, measure_precision, measure_roofline
from autotune.cli import main
from autotune.machine import detect_machine
from autotune.models.backends import backend_unavailable
from autotune.models.facts import model_facts
from autotune.tuner.profile import model_arch
from autotune.tuner.roofline import load_roofline, tower_products


def _cli(*args: str) -> tuple[int, str]:
    """Run the command line in-process: exit code and stdout."""
    with CliRunner().isolation() as (out, _err, _):
        code = main(list(args))
        sys.stdout.flush()
        return code, out.getvalue().decode()


def test_every_precision_is_measured_or_says_why(tiny_model: str, small_dataset: Path) -> None:
    """fp32 always runs; bf16 and int8 either report GFLOP/s or a one-line reason; preprocessing is timed."""
    roof = measure_roofline(tiny_model, str(small_dataset), seconds=0.05)
    by_name = {p.precision: p for p in roof.peaks}
    assert set(by_name) == {"fp32", "bf16", "int8"}
    assert by_name["fp32"].gflops and by_name["fp32"].gflops > 0
    for peak in by_name.values():
        assert (peak.gflops or 0) > 0 or (peak.error and "\n" not in peak.error)
    assert roof.preprocess_s_per_image_per_core and roof.preprocess_s_per_image_per_core > 0
    assert roof.ceiling_images_per_s < roof.model_ceiling_images_per_s
    assert roof.arch == model_arch(tiny_model) and roof.cores >= 1


def test_products_chain_with_every_count_used() -> None:
    """ViT-B/32's products chain up (projections, MLP up then down) with each product used as often as it runs."""
    vit_b32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "patch_size": 32,
               "image_size": 224}  # fmt: skip
    products = tower_products(vit_b32)
    chains = _product_chains(products)
    for chain in chains:
        assert all(a[2] == b[1] for a, b in zip(chain, chain[1:], strict=False))  # each output feeds the next
    used = [shape for chain in chains for shape in chain]
    assert sorted(used) == sorted((r, k, c) for r, k, c, n in products for _ in range(n))


def test_int8_through_openvino_runs_its_quantised_kernels(tiny_model: str) -> None:
    """OpenVINO's int8 products are measured, with the int8 kernel its CPU plugin chose (AMX's where there)."""
    if backend_unavailable("openvino"):
        pytest.skip("openvino missing")
    peak = measure_openvino_int8(tower_products(model_facts(tiny_model).vision), threads=1, seconds=0.05)
    assert peak.precision == "int8" and peak.gflops and peak.gflops > 0 and peak.kernel
    assert peak.kernel.startswith("openvino:") and "i8" in peak.kernel.lower(), peak.kernel
    if "amx_int8" in Path("/proc/cpuinfo").read_text(encoding="utf-8"):
        assert "amx" in peak.kernel


def test_an_unsupported_product_is_reported_not_raised() -> None:
    """A product the CPU build cannot run (int8 with a K not a multiple of 8) becomes an error line."""
    peak = measure_precision("int8", [(17, 13, 24, 1)], threads=1, seconds=0.01)
    assert peak.gflops is not None or peak.error


def test_cli_stores_it_for_this_machine(tiny_model: str, small_dataset: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`bench roofline --json` prints plainly named figures and stores the file the other commands read."""
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    code, out = _cli("bench", "roofline", "--model", tiny_model, "--dataset", str(small_dataset),
                     "--seconds", "0.05", "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert {"ceiling_images_per_s", "model_ceiling_images_per_s", "gflop_per_image", "best_precision"} <= set(data)
    assert Path(data["saved_to"]).is_file()
    stored = load_roofline(detect_machine().machine_id, model_arch(tiny_model))
    assert stored is not None and stored.ceiling_images_per_s == pytest.approx(data["ceiling_images_per_s"], rel=1e-3)
    # The ladder states each stage as a share of the stored ceiling.
    rows = [{"stage": "a", "images_per_s": stored.ceiling_images_per_s / 2}, {"stage": "b", "images_per_s": 1.0}]
    result: dict[str, object] = {"best_stage": "a"}
    _add_roofline_shares(result, rows, tiny_model)
    assert rows[0]["roofline_share"] == pytest.approx(0.5, abs=1e-3) and result["best_roofline_share"] == rows[0][
        "roofline_share"
    ]
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "elsewhere"))
    result = {}
    _add_roofline_shares(result, rows, tiny_model)
    assert "bench roofline" in str(result["roofline"])


def test_preprocessing_cost_skips_broken_images(tiny_model: str, tmp_path: Path) -> None:
    """A corrupt file is left out of the preprocessing figure; a folder of only broken ones is one line."""
    from autotune.bench.roofline import preprocess_seconds_per_image
    from autotune.data import make_dataset
    from autotune.errors import ConfigError

    folder = tmp_path / "db"
    make_dataset(folder, n=4, seed=2)
    first = sorted(folder.rglob("*.jpg"))[0]
    (first.parent / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    assert preprocess_seconds_per_image(str(folder), tiny_model, n=8) > 0
    bad = tmp_path / "bad" / "label"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(ConfigError, match="no decodable images"):
        preprocess_seconds_per_image(str(tmp_path / "bad"), tiny_model)
