"""`bench first-run`: the index-building first retrieval against a rescan, through the real retrieval path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autotune.cli import app


@pytest.mark.slow  # a wrapper of retrieval paths tested end to end elsewhere; five spawned scans
def test_first_run_builds_a_whole_index_each_round_against_a_full_rescan(tiny_model: str) -> None:
    """Every round builds a new index of all images and runs one full rescan; the ratio is of their medians."""
    out = CliRunner().invoke(
        app, ["bench", "first-run", "--n", "16", "--repeats", "1", "--model", "synthetic:tiny", "--json",
              "--config", '{"producers": 1, "cpu_models": 1, "cpu_batch": 8}']
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert [r["mode"] for r in res["runs"]["first_run"]] == ["index-new"]
    assert [r["mode"] for r in res["runs"]["rescan"]] == ["scan"]
    assert all(r["images"] == 16 for rs in res["runs"].values() for r in rs)
    assert res["first_over_rescan"] == round(res["first_run_images_per_s"] / res["rescan_images_per_s"], 4)
