"""`bench serve`: the real server under bounded client load, beside `autotune retrieve` on the same index."""

from __future__ import annotations

import json
from pathlib import Path

from processes import leftover_processes
from typer.testing import CliRunner

from autotune.cli import app


def test_levels_retrieve_and_scans_on_a_small_generated_index(tiny_model: str, small_dataset: Path) -> None:
    out = CliRunner().invoke(
        app, ["bench", "serve", "--n", "3000", "--model", tiny_model, "--clients", "1", "--clients", "3",
              "--requests", "12", "--retrieve-runs", "1", "--dataset", str(small_dataset), "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert [lv["clients"] for lv in res["levels"]] == [1, 3]
    for level in res["levels"]:
        assert level["requests"] == 12 and 0 < level["p50_ms"] <= level["p99_ms"] and level["queries_per_s"] > 0
    assert res["retrieve_process"]["runs"] == 1 and res["same_top9"] is True
    assert res["index_scans"]["recall_at_9"] == 1.0 and res["server_scan"] == "rerank"
    assert res["p50_ms_1_client"] == res["levels"][0]["p50_ms"]
    # The server it started is stopped (the engine's fork server, a helper of this process, may stay).
    servers = [p for p in leftover_processes(15) if "serve" in p.cmdline()]
    assert not servers
