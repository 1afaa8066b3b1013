"""Benchmark figures as data: run files in, one rendered page out, and the check that they agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.bench import runs
from autotune.errors import ConfigError


def _record(folder: Path, command: str, date: str, result: object) -> Path:
    record = runs.run_file(command, result, commit="abc1234", date=date)
    return runs.write_run(record, folder)


def test_the_page_shows_the_latest_run_of_each_command_per_machine(tmp_path: Path) -> None:
    folder = tmp_path / "benchmarks"
    _record(folder, "autotune bench index --n 100", "2026-12-01T10:00:00Z", {"p50_ms": 9.0})
    _record(folder, "autotune bench index --n 100", "2026-12-02T10:00:00Z", {"p50_ms": 7.5})
    _record(folder, "autotune bench configs --images 10", "2026-12-02T11:00:00Z",
            {"images": 10, "rows": [{"config": "a", "images_per_s": 1.5}]})  # fmt: skip
    page = runs.render(folder)
    assert "| p50_ms | 7.5 |" in page and "| p50_ms | 9.0 |" not in page  # older runs stay in the data only
    assert page.count("### autotune bench index --n 100") == 1 and "| a | 1.5 |" in page
    assert "at `abc1234`, 2026-12-02T10:00:00Z" in page and "## " in page


def test_the_check_fails_when_the_page_drifts_from_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, page = tmp_path / "benchmarks", tmp_path / "benchmarks.md"
    monkeypatch.setattr(runs, "RUNS_DIR", folder)
    monkeypatch.setattr(runs, "RENDERED", page)
    folder.mkdir()
    _record(folder, "autotune bench index", "2026-12-01T10:00:00Z", {"p50_ms": 9.0})
    assert runs.main(["render"]) == 0 and runs.main(["render", "--check"]) == 0
    page.write_text(page.read_text().replace("9.0", "4.0"))  # a figure edited by hand
    assert runs.main(["render", "--check"]) == 1


def test_a_file_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"command": "autotune bench index"}))
    with pytest.raises(ConfigError, match="not a run file .*missing commit, date, machine, result"):
        runs.load_runs(tmp_path)
