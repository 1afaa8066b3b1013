"""`run_retrieval` and `choose_config`: what `autotune retrieve` decides before and around the search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import ConfigError
from autotune.retrieval import RetrievalOptions, choose_config, run_retrieval, safe_default_config

QUERY = "a photo of Felis catus"


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No profile of the user's leaks in: a fresh studies folder for each test."""
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"queries": ()}, "empty query"), ({"queries": (" ",)}, "empty query"), ({"index_dtype": "int8"}, "float16"),
     ({"top_k": 0}, "--top-k"), ({"update": False, "rescan": True}, "--no-update")],
    ids=["no-query", "blank-query", "index-dtype", "top-k", "no-update-rescan"],
)  # fmt: skip
def test_options_refuse_what_cannot_run(changes: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"queries": (QUERY,)}
    with pytest.raises(ConfigError, match=needle):
        RetrievalOptions(**{**base, **changes}).validate()  # type: ignore[arg-type]


def test_without_a_profile_the_safe_default_runs_and_auto_says_so(tiny_model: str) -> None:
    notices: list[str] = []
    assert choose_config("none", tiny_model, notice=notices.append) == safe_default_config()
    assert notices == []
    assert choose_config("auto", tiny_model, notice=notices.append) == safe_default_config()
    assert len(notices) == 1 and notices[0].startswith("no profile in use for this model's architecture")


def test_run_retrieval_writes_the_results_folder(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    said: list[str] = []
    opts = RetrievalOptions(
        queries=(QUERY,), dataset=str(small_dataset), model=tiny_model, profile="none", out=tmp_path / "out",
        index_dir=tmp_path / "idx",
    )  # fmt: skip
    result = run_retrieval(opts, log=said.append)
    assert result.mode == "index-new" and len(result.hits[0]) == 9
    assert any("synthetic models have random weights" in line for line in said)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["queries"][0]["query"] == QUERY and saved["config"] == safe_default_config().describe()
    assert (tmp_path / "out" / "contact_sheet.png").is_file()
    # The index records who built it; --no-update answers from it as it stands, with the same top 9.
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["profile"] is None and meta["config"] == safe_default_config().describe()
    again = run_retrieval(RetrievalOptions(**{**opts.__dict__, "update": False}))
    assert again.mode == "index" and [h.id for h in again.hits[0]] == [h.id for h in result.hits[0]]
    with pytest.raises(ConfigError, match="no complete index at"):
        run_retrieval(RetrievalOptions(**{**opts.__dict__, "update": False, "index_dir": tmp_path / "empty"}))


def test_inputs_are_checked_before_anything_is_said(tmp_path: Path) -> None:
    said: list[str] = []
    opts = RetrievalOptions(queries=(QUERY,), dataset=str(tmp_path / "nowhere"), model="synthetic:tiny")
    with pytest.raises(Exception, match="nowhere"):
        run_retrieval(opts, log=said.append, notice=said.append)
    assert said == []
