"""bench configs over several shapes of one database: interleaved runs, ratios to the first, top-9 by content."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from autotune.cli import app
from autotune.data import make_dataset


def test_three_shapes_same_top9(tmp_path: Path) -> None:
    """Files, shards and a save_to_disk dataset of the same images: one row each, the same top-9 images."""
    shapes = []
    for fmt in ("files", "webdataset", "hf"):
        make_dataset(tmp_path / fmt, n=24, seed=4, format=fmt, shard_images=10)
        shapes += ["--dataset", str(tmp_path / fmt)]
    out = CliRunner().invoke(
        app, ["bench", "configs", "--model", "fake:32", *shapes, "--images", "24", "--repeats", "1", "--json",
              "--config", '{"cpu_models": 1, "cpu_batch": 8}']
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["datasets"] == [str(tmp_path / f) for f in ("files", "webdataset", "hf")]
    assert [r["dataset"] for r in res["rows"]] == res["datasets"]
    assert res["rows"][0]["over_first_dataset"] == 1.0 and all(r["images_per_s"] > 0 for r in res["rows"])
    assert res["top9_agree"] is True and res["top9_overlap_min"] == 9
    assert sum(" on " in line for line in out.stderr.splitlines() if line.startswith("pass 1/1")) == 3
