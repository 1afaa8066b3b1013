"""`autotune ...` through Typer's CliRunner: every command's help, user errors as one line with exit 2, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autotune.cli import COMMANDS, app, main
from autotune.cli.app import bench_app, index_app, profile_app

GROUPS = {id(app): [], id(bench_app): ["bench"], id(profile_app): ["profile"], id(index_app): ["index"]}
PATHS = [[*GROUPS[id(group)], name] for group, name, _ in COMMANDS]


def run(*args: str) -> tuple[int, str, str]:
    """Run the console script's ``main`` in the runner's isolation: exit code, stdout, stderr."""
    with CliRunner().isolation() as (out, err, _):
        code = main(list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture(autouse=True)
def _studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles and studies go to a fresh folder for each test."""
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_has_help_with_plain_flags(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert f"{' '.join(path)} [OPTIONS]" in result.output
    assert "<bool>" not in result.output  # flags are flags, not options taking a value
    assert "--help  " in result.output or "--help\n" in result.output


def test_help_paragraphs_are_reflowed() -> None:
    """A docstring's line breaks are not the terminal's: no paragraph line ends mid-sentence at width 200."""
    result = CliRunner().invoke(app, ["retrieve", "--help"], terminal_width=200)
    assert "tuned profile, or a safe default) and builds an embedding index" in result.output


def test_groups_and_top_level_list_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("retrieve", "study", "bench", "profile", "index", "machine", "demo"):
        assert f"  {name} " in result.output


def _bad_yaml(tmp: Path) -> str:
    """A search-space file that is not valid YAML."""
    path = tmp / "space.yaml"
    path.write_text("params: [unclosed\n")
    return str(path)


ERRORS = {
    "missing-dataset": (lambda t: ["retrieve", "q", "--dataset", str(t / "nowhere")], "nowhere"),
    "missing-queries-file": (lambda t: ["retrieve", "--queries-file", str(t / "q.txt")], "queries file not found"),
    "empty-query": (lambda t: ["retrieve", " "], "empty query"),
    "bad-index-dtype": (lambda t: ["retrieve", "q", "--index-dtype", "int8"], "--index-dtype"),
    "unknown-engine": (lambda t: ["retrieve", "q", "--engine", "spark"], "--engine must be one of local, ray"),
    "address-without-ray": (lambda t: ["retrieve", "q", "--address", "auto"], "--address needs --engine ray"),
    "bad-yaml-space": (lambda t: ["study", "--space", _bad_yaml(t), "--json"], "space.yaml"),
    "missing-space": (lambda t: ["study", "--space", str(t / "none.yaml"), "--json"], "none.yaml"),
    "no-profile": (lambda t: ["profile", "show"], "no profile for this machine"),
    "unknown-profile-id": (lambda t: ["profile", "use", "nope"], "autotune profile list"),
    "verify-without-profile": (lambda t: ["verify"], "no profile"),
    "bad-engine-json": (lambda t: ["bench", "index-update", "--config", "{"], "--config must be a JSON object"),
    "missing-grid": (lambda t: ["bench", "samplers", "--grid", str(t / "g.json")], "grid file not found"),
    "not-an-index": (lambda t: ["index", "rm", str(t)], "not an index"),
    "unknown-model-offline": (lambda t: ["bench", "backends", "--model", "nobody/no-such-model"], "nobody/no-such"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_user_errors_are_one_line_exit_2(case: str, tmp_path: Path) -> None:
    make_args, needle = ERRORS[case]
    code, out, err = run(*make_args(tmp_path))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_bad_split_is_one_line_exit_2(small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    code, _, err = run("retrieve", "q", "--dataset", str(small_dataset), "--split", "nope", "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err, err


def test_usage_errors_keep_clicks_form_and_exit_2() -> None:
    code, _, err = run("retrieve", "--top-k", "0")
    assert code == 2 and "Usage:" in err and "--top-k" in err
    code, _, err = run("machine", "--no-such-flag")
    assert code == 2 and "No such option" in err


def test_machine_json() -> None:
    code, out, _ = run("machine", "--json")
    data = json.loads(out)
    assert code == 0 and data["machine_id"] and isinstance(data["logical_cores"], int)


def test_bench_index_json_reports_numbers() -> None:
    code, out, _ = run("bench", "index", "--n", "50", "--dim", "8", "--queries", "2", "--json")
    data = json.loads(out)
    assert code == 0 and all(isinstance(v, int | float) for k, v in data.items() if k.endswith("_ms"))


def test_empty_lists_as_json() -> None:
    assert [json.loads(run(*args)[1]) for args in (["profile", "list", "--json"], ["index", "list", "--json"])] == [
        [],
        [],
    ]


def test_interrupt_is_130_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("autotune.cli.data.detect_machine", interrupted)
    code, _, err = run("machine")
    assert code == 130 and err.strip() == "interrupted"


def test_a_failed_check_keeps_its_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def failed() -> None:
        raise typer.Exit(1)

    monkeypatch.setattr("autotune.cli.data.detect_machine", failed)
    assert run("machine")[0] == 1


def test_python_dash_m_runs_the_cli() -> None:
    for module in ("autotune", "autotune.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "retrieve" in done.stdout, done.stderr
