"""`autotune serve` end to end: the real command on a free loopback port, real HTTP requests, a real browser."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image

from autotune.retrieval import retrieve
from autotune.serve import MAX_BODY_BYTES, is_loopback
from autotune.serve._run import exposure_warning

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
QUERY = "a photo of Felis catus"


class Server:
    """A running `autotune serve` process and how to talk to it."""

    def __init__(self, proc: subprocess.Popen[str], host: str, port: int, db: Path, index: Path, lines: list[str]):
        self.proc, self.host, self.port, self.db, self.index, self.lines = proc, host, port, db, index, lines

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request with the raw path as given (no client-side normalisation of `..`)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        """A JSON request and its parsed answer."""
        raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        status, headers, data = self.request(method, path, raw, {"Content-Type": "application/json"} if raw else None)
        assert headers["content-type"].startswith("application/json"), (path, headers)
        return status, json.loads(data)


def _start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], list[str], str]:
    """Start the command; return it, its output lines so far and the URL it announced."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "serving" in line and "http://" in line:
                url.append(line.split("http://", 1)[1].split("/", 1)[0])
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 150
    while not found.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start:\n" + "\n".join(lines[-20:]))
    return proc, lines, url[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path, tiny_model: str) -> Iterator[Server]:
    """The real command over a copy of the small corpus that holds a symlink to an image outside it."""
    tmp = tmp_path_factory.mktemp("serve")
    db = tmp / "db"
    shutil.copytree(small_dataset, db, copy_function=os.link)
    outside = tmp / "outside"
    outside.mkdir()
    first = sorted(db.rglob("*.jpg"))[0]
    shutil.copy(first, outside / "secret.jpg")
    (db / "Linked").mkdir()
    (db / "Linked" / "elsewhere.jpg").symlink_to(outside / "secret.jpg")
    index = tmp / "index"
    args = ["serve", "--dataset", str(db), "--model", tiny_model, "--profile", "none", "--index-dir", str(index),
            "--port", "0"]  # fmt: skip
    proc, lines, address = _start(args, tmp)
    host, port = address.rsplit(":", 1)
    srv = Server(proc, host, int(port), db, index, lines)
    try:
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ids_by_locator(srv: Server) -> dict[str, int]:
    """The index catalog: locator -> id (read from its files, as a second program would)."""
    import pyarrow.parquet as pq

    meta = json.loads((srv.index / "meta.json").read_text())
    cat = pq.read_table(str(srv.index / f"catalog-{meta['generation']}.parquet")).to_pydict()
    return dict(zip(cat["locator"], cat["id"], strict=True))


def test_search_info_and_images(server: Server) -> None:
    assert is_loopback(server.host)
    status, info = server.json("/api/info")
    assert status == 200
    assert info["model"] == "synthetic:tiny" and info["images"] == 49 and info["generation"] >= 1
    assert info["backend"].startswith("cpu:") and info["precision"] and "built_by_profile" in info
    assert info["built_with"]  # the configuration that embedded the images is recorded in the index
    status, body = server.json("/api/search?q=" + QUERY.replace(" ", "+") + "&k=9")
    assert status == 200 and body["query"] == QUERY and body["truncated"] is False
    assert [r["rank"] for r in body["results"]] == list(range(1, 10))
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # The same answer as `retrieve` on the same index.
    expected = retrieve([QUERY], dataset=str(server.db), model="synthetic:tiny", index_dir=server.index)
    assert [r["id"] for r in body["results"]] == [h.id for h in expected.hits[0]]
    # Several queries in one POST.
    status, many = server.json("/api/search", "POST", {"queries": [QUERY, "a red rocket"], "k": 3})
    assert status == 200 and [a["query"] for a in many] == [QUERY, "a red rocket"]
    assert all(len(a["results"]) == 3 for a in many) and many[0]["results"] == body["results"][:3]
    # The original bytes, and a thumbnail.
    hit = body["results"][0]
    locator = {v: k for k, v in _ids_by_locator(server).items()}[hit["id"]]
    status, headers, data = server.request("GET", hit["url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and data == (server.db / locator).read_bytes()
    status, headers, data = server.request("GET", f"/api/thumbnails/{hit['id']}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(data)).size) <= 256


def test_long_query_is_answered_and_flagged(server: Server) -> None:
    long = " ".join(["a photo of a small striped cat"] * 20)  # far beyond 77 tokens, under the size limit
    status, body = server.json("/api/search?q=" + long.replace(" ", "+"))
    assert status == 200 and body["truncated"] is True and len(body["results"]) == 9
    res = retrieve([long], dataset=str(server.db), model="synthetic:tiny", index_dir=server.index)
    assert res.truncated == [True] and any("77 tokens" in n for n in res.notes)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/search?q=", None, 400),
        ("GET", "/api/search?q=%20%20%09", None, 400),
        ("GET", "/api/search", None, 400),
        ("GET", "/api/search?q=cat&k=0", None, 400),
        ("GET", "/api/search?q=cat&k=50", None, 400),  # above the 49 images in the index
        ("GET", "/api/search?q=cat&k=abc", None, 400),
        ("GET", "/api/search?q=" + "x" * 3000, None, 413),
        ("GET", "/api/images/123456", None, 404),
        ("GET", "/api/images/-1", None, 404),
        ("GET", "/api/images/..", None, 404),
        ("GET", "/api/images/..%2F..%2Fetc%2Fpasswd", None, 404),
        ("GET", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd", None, 404),
        ("GET", "/api/images/%252e%252e%252fetc", None, 404),
        ("GET", "/api/images//etc/passwd", None, 404),
        ("GET", "/api/images/%2Fetc%2Fpasswd", None, 404),
        ("GET", "/api/thumbnails/..%5C..%5Cwin.ini", None, 404),
        ("GET", "/static/../serve/_app.py", None, 404),
        ("GET", "/static/..%2F_app.py", None, 404),
        ("GET", "/static/%2Fetc%2Fpasswd", None, 404),
        ("GET", "/../../etc/passwd", None, 404),
        ("POST", "/api/search", b"not json", 400),
        ("POST", "/api/search", b'{"queries": "cat"}', 400),
        ("POST", "/api/search", b'{"queries": []}', 400),
        ("POST", "/api/search", b'{"queries": ["cat", 3]}', 400),
        ("POST", "/api/search", b'{"queries": ["cat"], "k": 0}', 400),
        ("POST", "/api/search", b"[" + b"1," * (MAX_BODY_BYTES // 2) + b"1]", 413),
        ("DELETE", "/api/search", None, 405),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_bad_input_is_a_one_line_json_error(server: Server, method: str, path: str, body: bytes | None,
                                           status: int) -> None:  # fmt: skip
    got, headers, data = server.request(method, path, body)
    assert got == status, data[:200]
    assert headers["content-type"].startswith("application/json")
    error = json.loads(data)["error"]
    assert error and "\n" not in error and "Traceback" not in error
    assert b"root:" not in data  # no file outside the database in any answer


def test_a_link_out_of_the_database_is_not_served(server: Server) -> None:
    linked = _ids_by_locator(server)["Linked/elsewhere.jpg"]
    for route in ("images", "thumbnails"):
        status, body = server.json(f"/api/{route}/{linked}")
        assert status == 403 and "outside the database" in body["error"]


def test_page_and_its_files(server: Server) -> None:
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<form" in page and b"<input" in page and b'name="q"' in page
    assert b"http://" not in page and b"https://" not in page  # nothing from the internet
    for name in ("app.js", "style.css"):
        status, _h, data = server.request("GET", f"/static/{name}")
        assert status == 200 and data


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`apt-get install -y chromium`)")
def test_results_page_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    url = f"http://{server.host}:{server.port}/?q=a+photo+of+Felis+catus"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1100",
            "--virtual-time-budget=8000"]  # fmt: skip
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="hit"') == 9  # the script ran and drew the 3 x 3 grid
    assert html.count("/api/thumbnails/") == 9 and "9 results" in html
    shot = tmp_path / "results.png"
    res = subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_new_generation_is_picked_up_without_dropping_requests(server: Server) -> None:
    status, before = server.json("/api/info")
    added = sorted(server.db.rglob("*.jpg"))[:3]
    for n, src in enumerate(added):
        os.link(src, src.parent / f"added-{n}-{src.name}")
    answers: list[int] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(server.request("GET", "/api/search?q=a+cat&k=5")[0])

    client = threading.Thread(target=ask)
    client.start()
    try:
        res = retrieve([QUERY], dataset=str(server.db), model="synthetic:tiny", index_dir=server.index)
        assert res.mode == "index-updated"
        deadline = time.monotonic() + 30
        info = before
        while info["generation"] == before["generation"] and time.monotonic() < deadline:
            time.sleep(0.3)
            _s, info = server.json("/api/info")
    finally:
        stop.set()
        client.join(30)
    assert info["generation"] > before["generation"] and info["images"] == before["images"] + 3
    assert answers and set(answers) == {200}
    new_id = _ids_by_locator(server)[str(added[0].relative_to(server.db).parent / f"added-0-{added[0].name}")]
    status, _h, data = server.request("GET", f"/api/images/{new_id}")
    assert status == 200 and data == added[0].read_bytes()


def test_sigterm_stops_it_cleanly(server: Server) -> None:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert "server stopped" in "\n".join(server.lines)
    # Its helpers (the engine's fork server, multiprocessing's resource tracker) end when it has.
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive


def test_no_update_without_an_index_is_one_line(tmp_path: Path, small_dataset: Path, tiny_model: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "autotune", "serve", "--dataset", str(small_dataset), "--model", tiny_model,
         "--profile", "none", "--index-dir", str(tmp_path / "none"), "--no-update", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no complete index at") and "Traceback" not in res.stderr


def test_only_loopback_goes_unwarned() -> None:
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    assert exposure_warning("localhost") is None
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        warning = exposure_warning(host)
        assert warning is not None and "no authentication" in warning and "\n" not in warning
