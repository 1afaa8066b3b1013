"""`autotune bench serve`: the server's latency and throughput at the reference scale, beside `autotune retrieve`.

A generated N x DIM index (the same generator as ``bench index``) whose catalog points at the generated corpus's
real images is served by the real command (``autotune serve --no-update``, another process, a free loopback
port). Client threads, each with its own keep-alive connection, send a fixed number of distinct queries at 1, 4
and 16 at a time; between the levels, ``autotune retrieve --no-update`` answers one of the same queries from the
same index as a new process (what each query cost before the server). The index's two scans are compared first,
in this process: the exact float32 scan and the float16 pass with an exact re-rank, with recall@9.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.bench.index import build_synthetic_index
from autotune.data.sources import open_source
from autotune.defaults import default_dataset
from autotune.errors import AutotuneError
from autotune.index import IndexKey, IndexMatrix
from autotune.models.facts import model_facts
from autotune.progress import Log, quiet
from autotune.retrieval import embedding_recipe, safe_default_config

CLIENTS = (1, 4, 16)
_START_TIMEOUT_S = 300


def bench_serve(
    n: int = 500_000,
    model: str = "synthetic:clip-vit-base-patch32",
    clients: Sequence[int] = CLIENTS,
    requests: int = 160,
    retrieve_runs: int = 3,
    seed: int = 0,
    dataset: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Serve a generated ``n``-image index and time it under 1, 4 and 16 clients, beside ``autotune retrieve``.

    Each client level sends ``requests`` queries in all (distinct texts, so no answer is cached); p50/p99 are
    over those requests, ``queries_per_s`` is requests over the level's wall time. ``retrieve_runs`` new
    ``autotune retrieve`` processes answer the same queries, interleaved with the levels; their top 9 must
    match the server's. ``dataset`` is the folder whose images the rows show (default: the generated corpus).

    Example:
        >>> bench_serve(n=5_000, model="synthetic:tiny", clients=(1, 2), requests=20)["same_top9"]  # doctest: +SKIP
        True
    """
    say = log or quiet
    facts = model_facts(model)
    corpus = Path(dataset) if dataset else default_dataset()
    source = open_source(corpus)
    records = source.records()
    with tempfile.TemporaryDirectory(prefix="autotune-bench-serve-") as tmp:
        index_dir = Path(tmp) / "index"
        key = IndexKey(model, facts.weights_hash, embedding_recipe(safe_default_config()), "-", facts.embed_dim)
        say(f"writing a generated {n:,} x {facts.embed_dim} index")
        build_synthetic_index(
            index_dir, n, facts.embed_dim, seed, key=key,
            locators=[r.locator for r in records], labels=[r.label for r in records],
        )  # fmt: skip
        scans = _compare_scans(index_dir, seed)
        say(f"index scans: exact {scans['exact_ms']} ms, rerank {scans['rerank_ms']} ms, "
            f"recall@9 {scans['recall_at_9']}")  # fmt: skip
        texts = _queries([r.label or "thing" for r in records], requests * len(clients) + retrieve_runs + 8, seed)
        server = _Server(index_dir, corpus, model, Path(tmp))
        try:
            levels, retrieved = [], []
            warm = texts[:4]
            for text in warm:  # first requests pay lazy imports and page faults
                server.search(text)
            at = len(warm)
            for level, c in enumerate(clients):
                if level < retrieve_runs:
                    retrieved.append(_retrieve(texts[at], index_dir, corpus, model, Path(tmp), server))
                    say(f"autotune retrieve: {retrieved[-1]['wall_ms']:.0f} ms")
                    at += 1
                levels.append(_level(server, texts[at : at + requests], c))
                at += requests
                row = levels[-1]
                say(f"{c} clients: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['queries_per_s']} queries/s")
            for _ in range(len(clients), retrieve_runs):
                retrieved.append(_retrieve(texts[at], index_dir, corpus, model, Path(tmp), server))
                at += 1
            info = server.info()
        finally:
            server.stop()
    walls = [r["wall_ms"] for r in retrieved]
    one = next((lv for lv in levels if lv["clients"] == 1), levels[0])
    retrieve_p50 = float(np.median(walls)) if walls else None
    return {
        "n": n,
        "dim": facts.embed_dim,
        "model": model,
        "requests_per_level": requests,
        "server_scan": info.get("scan"),
        "levels": levels,
        "p50_ms_1_client": one["p50_ms"],
        "queries_per_s_max_clients": levels[-1]["queries_per_s"],
        "retrieve_process": {"runs": len(walls), "p50_ms": round(retrieve_p50, 1) if retrieve_p50 else None,
                             "wall_ms": walls},  # fmt: skip
        "retrieve_over_server_p50": round(retrieve_p50 / one["p50_ms"], 1) if retrieve_p50 else None,
        "same_top9": all(r["same_top9"] for r in retrieved),
        "index_scans": scans,
    }


def _compare_scans(index_dir: Path, seed: int, queries: int = 20) -> dict[str, Any]:
    """The index's exact and re-ranked scans on the same random queries: median ms and recall@9."""
    ids = np.load(next(index_dir.glob("ids-*.npy")))
    emb = np.load(next(index_dir.glob("embeddings-*.npy")))
    rng = np.random.default_rng(seed + 7)
    qs = rng.standard_normal((queries, emb.shape[1])).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    out: dict[str, Any] = {}
    answers = {}
    for scan in ("exact", "rerank"):
        matrix = IndexMatrix(ids, emb, scan)
        matrix.search(qs[:1], 9)  # page faults, BLAS start-up
        times, found = [], []
        for q in qs:
            t0 = time.perf_counter()
            found.append(matrix.search(q[None, :], 9)[1][0])
            times.append(time.perf_counter() - t0)
        out[f"{scan}_ms"] = round(1000 * float(np.median(times)), 2)
        answers[scan] = found
        if scan == "rerank":
            out["rerank_proven"] = matrix.stats.fast
            out["rerank_fell_back"] = matrix.stats.exact
        del matrix
    recall = [len(set(a) & set(b)) / len(a) for a, b in zip(answers["exact"], answers["rerank"], strict=True)]
    out["recall_at_9"] = round(float(np.mean(recall)), 4)
    out["queries"] = queries
    return out


def _queries(labels: list[str], count: int, seed: int) -> list[str]:
    """``count`` distinct query texts built from the corpus's labels."""
    rng = np.random.default_rng(seed)
    words = ("a photo of", "a close-up of", "a picture of", "an image of")
    kinds = sorted(set(labels))
    return [f"{words[i % len(words)]} {kinds[int(rng.integers(len(kinds)))]} number {i}" for i in range(count)]


class _Server:
    """`autotune serve --no-update` on a free loopback port, in its own process."""

    def __init__(self, index_dir: Path, dataset: Path, model: str, cwd: Path) -> None:
        """Start it and wait for the line that names its URL."""
        cmd = [sys.executable, "-m", "autotune", "serve", "--index-dir", str(index_dir), "--dataset", str(dataset),
               "--model", model, "--profile", "none", "--no-update", "--port", "0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        self.port = 0

        def pump() -> None:
            """Read its output; note the port."""
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if "http://127.0.0.1:" in line:  # the announcement (wrapped at 80 columns without a terminal)
                    self.port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AutotuneError("the server did not start: " + " | ".join(self.lines[-3:]))

    def connect(self) -> http.client.HTTPConnection:
        """A keep-alive connection."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def search(self, text: str, conn: http.client.HTTPConnection | None = None) -> list[int]:
        """The top-9 ids of one query."""
        own = conn or self.connect()
        try:
            own.request("GET", "/api/search?k=9&q=" + _quote(text))
            res = own.getresponse()
            body = json.loads(res.read())
            if res.status != 200:
                raise AutotuneError(f"the server answered {res.status}: {body.get('error')}")
            return [int(r["id"]) for r in body["results"]]
        finally:
            if conn is None:
                own.close()

    def info(self) -> dict[str, Any]:
        """``/api/info``."""
        conn = self.connect()
        try:
            conn.request("GET", "/api/info")
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM, then wait (a kill if it does not end)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _quote(text: str) -> str:
    """URL-encode a query."""
    from urllib.parse import quote_plus

    return quote_plus(text)


def _level(server: _Server, texts: list[str], clients: int) -> dict[str, Any]:
    """``clients`` threads share ``texts``; latency per request and the level's throughput."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    jobs = iter(texts)

    def client() -> None:
        """Send requests on one connection until the texts run out."""
        conn = server.connect()
        try:
            while True:
                with lock:
                    text = next(jobs, None)
                if text is None:
                    return
                t0 = time.perf_counter()
                try:
                    server.search(text, conn)
                except (AutotuneError, OSError, http.client.HTTPException) as exc:
                    errors.append(str(exc))
                    return
                with lock:
                    latencies.append(time.perf_counter() - t0)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise AutotuneError(f"{len(errors)} requests failed at {clients} clients: {errors[0]}")
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "queries_per_s": round(len(latencies) / wall, 1),
    }


def _retrieve(text: str, index_dir: Path, dataset: Path, model: str, tmp: Path, server: _Server) -> dict[str, Any]:
    """One ``autotune retrieve --no-update`` process on the same index: its wall time and whether it agrees."""
    cmd = [sys.executable, "-m", "autotune", "retrieve", text, "--index-dir", str(index_dir), "--dataset",
           str(dataset), "--model", model, "--profile", "none", "--no-update", "--json",
           "--out", str(tmp / "out")]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ}, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise AutotuneError("autotune retrieve failed: " + (res.stderr.strip().splitlines() or ["?"])[-1])
    ids = [int(h["id"]) for h in json.loads(res.stdout)["queries"][0]["hits"]]
    return {"wall_ms": round(1000 * wall, 1), "same_top9": ids == server.search(text)}
