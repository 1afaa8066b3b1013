"""The console: figures as a table or as JSON, news on stderr, stdout kept clean for --json."""

from __future__ import annotations

import json

import pytest

from autotune import console


def test_show_prints_json_alone_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    console.show({"images_per_s": 123.456, "nested": {"a": 1}}, "title", as_json=True)
    console.log("news")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"images_per_s": 123.456, "nested": {"a": 1}}
    assert "news" in captured.err


def test_show_prints_a_table_of_flat_figures(capsys: pytest.CaptureFixture[str]) -> None:
    console.show({"images_per_s": 1234.5, "tiny": 0.0001, "nested": {"a": 1}}, "bench", as_json=False)
    out = capsys.readouterr().out
    assert "bench" in out and "1,234.5" in out and "1.000e-04" in out and "nested" not in out


def test_rows_and_an_empty_table(capsys: pytest.CaptureFixture[str]) -> None:
    console.print_rows("hits", [{"rank": 1, "label": "cat"}])
    console.print_rows("nothing", [])
    out = capsys.readouterr().out
    assert "cat" in out and "nothing: nothing to show" in out


def test_note_is_one_unfolded_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    console.note("[not markup] " + "word " * 40)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("[not markup]")
