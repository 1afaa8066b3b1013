"""bench backends: side-by-side rows of throughput, setup and agreement with eager fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotune.bench.backends import ROW_KEYS, bench_backends, bench_images
from autotune.errors import ConfigError
from autotune.models.backends import backend_unavailable


def test_bench_two_backends_on_tiny(tiny_model: str) -> None:
    """Eager plus one more: every row has the keys, eager is the 1.0 baseline, the best one is named."""
    other = "onnx" if backend_unavailable("onnx") is None else "int8"
    out = bench_backends(tiny_model, batch=4, threads=1, n=8, backends=["eager", other], repeats=2)
    assert [r["backend"] for r in out["rows"]] == ["eager", other]
    for row in out["rows"]:
        assert set(row) == set(ROW_KEYS) and row["error"] is None
        assert row["images_per_s"] > 0 and len(row["pass_images_per_s"]) == 2
        assert row["setup_cold_s"] > 0 and row["setup_cached_s"] > 0
        assert row["min_cosine"] >= 0.99 and row["guard_ok"]
        assert row["centred_min_cosine"] <= row["min_cosine"] + 1e-6
    eager, second = out["rows"]
    assert eager["speedup_over_eager"] == 1.0 and eager["min_cosine"] == pytest.approx(1.0)
    assert second["cached_hit"] is True
    assert out["best_backend"] in ("eager", other) and out["best_speedup_over_eager"] >= 1.0
    assert (out["batch"], out["threads"], out["n"]) == (4, 1, 8)


def test_bench_reports_a_missing_backend(tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unavailable backend is a row with its reason, not a crash; eager is always measured."""
    import autotune.models.backends as B

    monkeypatch.setattr(B, "backend_unavailable", lambda name, device="cpu": "not here" if name == "onnx" else None)
    pixels = np.full((4, 224, 224, 3), 100, np.uint8)
    out = bench_backends(tiny_model, batch=4, threads=1, n=4, backends=["onnx"], repeats=1, pixels=pixels)
    rows = {r["backend"]: r for r in out["rows"]}
    assert set(rows) == {"eager", "onnx"} and rows["onnx"]["error"] == "not here"
    assert rows["onnx"]["images_per_s"] is None and out["best_backend"] == "eager"


def test_bench_refuses_unknown_backend(tiny_model: str) -> None:
    """An unknown backend name is one ConfigError naming it."""
    with pytest.raises(ConfigError, match="tensorrt"):
        bench_backends(tiny_model, backends=["tensorrt"])


def test_bench_images() -> None:
    """Generated photos, preprocessed to the crop."""
    pixels = bench_images(3, 64)
    assert pixels.shape == (3, 64, 64, 3) and pixels.dtype == np.uint8 and pixels.std() > 10


def test_each_backend_is_stated_against_its_precisions_peak(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GFLOP/s from images/s and the tower's flops; the share of the stored peak of the backend's precision,
    only when the roofline was measured on the same thread count."""
    from autotune.machine import detect_machine
    from autotune.models.facts import model_facts
    from autotune.tuner.profile import model_arch
    from autotune.tuner.roofline import PrecisionPeak, Roofline, save_roofline, tower_flops

    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    roof = Roofline(
        machine_id=detect_machine().machine_id, arch=model_arch(tiny_model), cores=1, isa=(), gflop_per_image=0.1,
        peaks=(PrecisionPeak("fp32", 1, 50.0), PrecisionPeak("int8", 1, 400.0)),
        preprocess_s_per_image_per_core=None, torch_version="x", measured_at="now",
    )  # fmt: skip
    save_roofline(roof)
    out = bench_backends(tiny_model, batch=4, threads=1, n=4, backends=["eager", "int8"], repeats=1)
    gflop = tower_flops(model_facts(tiny_model).vision) / 1e9
    eager, int8 = out["rows"]
    assert (eager["precision"], int8["precision"]) == ("fp32", "int8")
    assert eager["gflop_per_s"] == pytest.approx(eager["images_per_s"] * gflop, rel=1e-2)
    assert eager["peak_share"] == pytest.approx(eager["gflop_per_s"] / 50.0, abs=2e-3)
    assert int8["peak_share"] == pytest.approx(int8["gflop_per_s"] / 400.0, abs=2e-3)
    two = bench_backends(tiny_model, batch=4, threads=2, n=4, backends=["eager"], repeats=1)
    assert two["rows"][0]["peak_share"] is None  # measured on 1 thread: no share for a 2-thread run


def test_json_stays_parseable_through_a_cold_nncf_build(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NNCF draws progress bars on stdout while it quantises; `--json` output must stay one JSON document."""
    import json

    from autotune.cli import main

    if backend_unavailable("openvino-int8"):
        pytest.skip("openvino or nncf missing")
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    code = main(["bench", "backends", "--model", tiny_model, "--backend", "openvino-int8", "--batch", "4", "--n", "4",
                 "--repeats", "1", "--threads", "1", "--json"])  # fmt: skip
    assert code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert [r["backend"] for r in data["rows"]] == ["eager", "openvino-int8"] and data["rows"][1]["error"] is None
    # The kernels OpenVINO chose for the products: int8 ones, and AMX's where the CPU has it.
    kernels = data["rows"][1]["kernels"]
    assert kernels and all(count > 0 for count in kernels.values()) and data["rows"][0]["kernels"] is None
    assert any(kind.lower().endswith("i8") for kind in kernels), kernels
    if "amx_int8" in Path("/proc/cpuinfo").read_text(encoding="utf-8"):
        assert any("amx" in kind for kind in kernels), kernels
