"""bench ladder end to end on the tiny model: every stage exact, the engine paired with the bare forward."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autotune.cli import app


def test_ladder_stages_are_exact_and_say_where_the_engine_time_goes(tiny_model: str) -> None:
    """Each stage matches its brute force; the engine/bare ratio is the median of the paired rounds' ratios."""
    out = CliRunner().invoke(
        app, ["bench", "ladder", "--n", "16", "--batch", "8", "--model", tiny_model, "--profile", "none",
              "--paired-rounds", "2", "--json"]
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    names = [r["stage"] for r in res["stages"]]
    assert names[:3] == ["baseline", "batched", "parallel preprocessing"]
    assert all(r["exact_vs_bruteforce"] for r in res["stages"])
    paired = res["engine_vs_bare_paired"]
    pairs = zip(paired["engine_steady_images_per_s"], paired["bare_forward_images_per_s"], strict=True)
    ratios = sorted(e / b for e, b in pairs)
    assert len(ratios) == 2
    assert res["engine_steady_vs_bare_forward"] == pytest.approx((ratios[0] + ratios[1]) / 2, abs=0.01)
    engine_rows = [r for r in res["stages"] if r["steady_images_per_s"]]
    assert engine_rows and all(0 < r["preprocess_core_share"] <= 1 for r in engine_rows)
    assert res["engine_time_per_image"]["forward_ms"] > 0
