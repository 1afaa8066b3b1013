"""bench index-scale: a linked database, the plan, the up-to-date check, recorded as a run file."""

from __future__ import annotations

import json
from pathlib import Path

from autotune.bench.runs import record_run
from autotune.bench.scale import link_database
from autotune.data import make_dataset, open_source


def test_linked_entries_are_distinct_images(tmp_path: Path) -> None:
    """Entries sharing bytes under distinct names are distinct records with their own locators."""
    make_dataset(tmp_path / "base", n=20, seed=1)
    link_database(tmp_path / "base", tmp_path / "db", 130)
    src = open_source(tmp_path / "db")
    assert len(src) == 130 == len({r.locator for r in src.records()})
    assert len(set(src.identities())) == 20  # the same bytes (the same inode): the same identity
    assert src.labels() == open_source(tmp_path / "base").labels()


def test_index_scale_figures_through_the_recorder(tmp_path: Path) -> None:
    """The command's --json is a run file's result: plan, check and replan over every entry."""
    path = record_run(["bench", "index-scale", "--n", "300", "--base", "17"], tmp_path)
    run = json.loads(path.read_text())
    res = run["result"]
    assert run["command"] == "autotune bench index-scale --n 300 --base 17"
    assert res["entries"] == res["distinct_locators"] == res["replan_kept"] == 300
    assert res["up_to_date"] is True
    for key in ("plan_s", "up_to_date_check_s", "replan_s", "peak_rss_mb"):
        assert isinstance(res[key], float) and res[key] > 0, key
