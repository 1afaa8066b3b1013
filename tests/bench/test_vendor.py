"""`bench vendor`: benchmark_app's report parsed from a recorded run, and one line where it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.bench import vendor
from autotune.engine.config import EngineConfig
from autotune.errors import AutotuneError, ConfigError

RECORDED = Path(__file__).with_name("benchmark_app_throughput.txt")


def test_a_recorded_report_gives_the_throughput_and_the_chosen_layout() -> None:
    """The report of `benchmark_app -hint throughput` on the ViT-B/32 int8 IR, batch 63 (2-core AMD EPYC)."""
    figures = vendor.parse_benchmark_app(RECORDED.read_text())
    assert figures == {"vendor_images_per_s": 171.45, "streams": 2, "threads": 2, "hint": "THROUGHPUT",
                       "requests": 2, "pinned": True}  # fmt: skip


def test_a_report_without_a_figure_is_one_line() -> None:
    with pytest.raises(AutotuneError, match="benchmark_app reported no throughput: .*cannot read") as info:
        vendor.parse_benchmark_app("[ ERROR ] cannot read model.xml\n")
    assert "\n" not in str(info.value)


def test_a_missing_vendor_tool_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(vendor.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="needs OpenVINO's benchmark_app") as info:
        vendor.benchmark_app()
    assert "\n" not in str(info.value)


def test_a_configuration_off_openvino_is_refused_before_any_run(small_dataset: Path) -> None:
    cfg = EngineConfig(cpu_models=2, cpu_threads=1, cpu_backend="onnx-int8")
    with pytest.raises(ConfigError, match="runs onnx-int8"):
        vendor.bench_vendor(cfg, dataset=str(small_dataset), model="synthetic:tiny")
