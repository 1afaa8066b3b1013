"""`autotune demo`: its stages in order through a view; the study and the model are stubbed (tested elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotune import demo
from autotune.engine.config import EngineConfig


class _Recorder:
    """A DemoView that keeps what it was shown."""

    def __init__(self) -> None:
        """Nothing shown yet."""
        self.shown: list[tuple[str, object]] = []

    def rule(self, title: str) -> None:
        """Keep a stage title."""
        self.shown.append(("rule", title))

    def echo(self, text: str) -> None:
        """Keep a line."""
        self.shown.append(("echo", text))

    def print_figures(self, title: str, figures: Mapping[str, object]) -> None:
        """Keep a table of figures."""
        self.shown.append(("figures", title))

    def print_rows(
        self, title: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None
    ) -> None:
        """Keep a table of rows."""
        self.shown.append(("rows", list(rows)))


def test_demo_shows_four_stages_then_the_hits(
    small_dataset: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)
    outcome = SimpleNamespace(summary=lambda: {"images_per_s": 1.0}, profile_path="p.json", config=config)
    monkeypatch.setattr(demo, "default_dataset", lambda progress: small_dataset)
    monkeypatch.setattr(demo, "demo_model", lambda data, progress: Path(tiny_model))
    monkeypatch.setattr(demo, "run_study", lambda options, log: outcome)
    view, said = _Recorder(), []
    demo.run_demo(view, tmp_path / "out", trials=2, log=said.append)
    rules = [text for kind, text in view.shown if kind == "rule"]
    assert [str(r)[:3] for r in rules] == ["1/4", "2/4", "3/4", "4/4"]
    rows = next(rows for kind, rows in view.shown if kind == "rows")
    assert isinstance(rows, list) and len(rows) == 9
    assert any(kind == "echo" and "results carry the queried label" in str(text) for kind, text in view.shown)
    assert (tmp_path / "out" / "results.json").is_file()
