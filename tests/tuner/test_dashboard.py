"""optuna-dashboard over a real small study: the JSON API, and the rendered page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.request
import wsgiref.simple_server as ws
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any

import pytest

from autotune.errors import ConfigError
from autotune.tuner.report import dashboard_app, serve_dashboard
from autotune.tuner.study import StudyOptions, run_study

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class _Server(ThreadingMixIn, ws.WSGIServer):
    daemon_threads = True


class _QuietHandler(ws.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[dict[str, Any]]:
    """A 2-trial study on the fake backend, served by the dashboard's WSGI app on a free local port."""
    tmp = tmp_path_factory.mktemp("dashboard")
    space = tmp / "space.yaml"
    space.write_text(
        "params:\n  cpu_threads: {type: int, low: 1, high: 2}\n  cpu_batch: {type: categorical, choices: [4, 8]}\n"
        "fixed: {producers: 1, cpu_models: 1, gpu_models: 0}\ndefaults: {cpu_threads: 1, cpu_batch: 8}\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_STUDIES", str(tmp / "studies"))
        out = run_study(StudyOptions(space=str(space), trials=2, rounds=2, model="fake:32",
                                     dataset=str(small_dataset), validate_repeats=0, save=False, min_timed_images=0))
    server = ws.make_server("127.0.0.1", 0, dashboard_app(out.storage), server_class=_Server,
                            handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        studies = _get_json(f"{base}/api/studies")["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == out.study_name)
        yield {"base": base, "name": out.study_name, "id": study_id, "outcome": out, "tmp": tmp}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_api_lists_the_study_and_its_trials(served: dict[str, Any]) -> None:
    studies = _get_json(f"{served['base']}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [served["name"]]
    assert studies[0]["directions"] == ["maximize"]
    detail = _get_json(f"{served['base']}/api/studies/{served['id']}")
    assert detail["name"] == served["name"]
    trials = detail["trials"]
    assert len(trials) >= 2
    assert trials[0]["number"] == 0 and trials[0]["state"] == "Complete"
    assert [p["name"] for p in trials[0]["params"]] == ["cpu_threads", "cpu_batch"]
    assert any(a["key"] == "default" for a in trials[0]["user_attrs"])
    assert detail["best_trials"]
    # The objective's name (study.set_metric_names) and the machine note (optuna_dashboard.save_note) show.
    assert detail["objective_names"] == ["images_per_s"]
    assert "clip-autotune study" in detail["note"]["body"]
    assert served["name"].split(".")[0] in detail["note"]["body"]  # the machine id


def test_dashboard_page_is_served(served: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"{served['base']}/dashboard/studies/{served['id']}", timeout=30) as resp:
        assert resp.status == 200
        assert "html" in resp.headers.get("Content-Type", "")
        assert b"<html" in resp.read().lower()


def test_missing_storage_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    said: list[str] = []
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(ConfigError, match="no study found") as info:
        dashboard_app(url)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no study found"):
        serve_dashboard(url, port=1, log=said.append)
    assert not (tmp_path / "absent.db").exists()
    assert said == []  # refused before announcing a URL
    assert capsys.readouterr().out == ""  # the library never prints


def test_busy_port_is_one_line(served: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    said: list[str] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve_dashboard(served["outcome"].storage, port=port, log=said.append)
    assert len(said) == 1 and f"http://127.0.0.1:{port}/dashboard" in said[0]  # announced through the log
    assert capsys.readouterr().out == ""


def _chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,900",
           "--virtual-time-budget=8000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`apt-get install -y chromium`)")
def test_rendered_in_headless_chromium(served: dict[str, Any]) -> None:
    tmp: Path = served["tmp"]
    study_url = f"{served['base']}/dashboard/studies/{served['id']}"
    # The trial list page, rendered: the study name and a row per trial.
    dom = _chromium(tmp, f"{study_url}/trials", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert served["name"] in html
    assert "Trial 0" in html and "Trial 1" in html and "Complete" in html
    assert "images_per_s" in html
    # A screenshot of the study's page, kept as an artifact.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-study.png"
    shot.unlink(missing_ok=True)
    res = _chromium(tmp, study_url, f"--screenshot={shot}")
    assert res.returncode == 0, res.stderr[-2000:]
    blob = shot.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 20_000  # a rendered page, not a blank one
