"""The artefact cache: keys of weights, kind and library versions; build-once under a file lock."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from autotune.models.backends import LOCKS_DIR, _cache, artefact_key, artefact_path, lock_path, materialise


def test_artefact_key_changes_with_its_inputs(tmp_path: Path) -> None:
    """Weights, artefact kind and extra options each change the key; the same inputs give the same key."""
    base = artefact_key("a" * 16, "onnx")
    assert artefact_key("a" * 16, "onnx") == base
    assert artefact_key("b" * 16, "onnx") != base
    assert artefact_key("a" * 16, "onnx-int8") != base
    assert artefact_key("a" * 16, "compile", batch=8) != artefact_key("a" * 16, "compile", batch=16)
    path = artefact_path(tmp_path, "a" * 16, "onnx", ".onnx")
    assert path.parent == tmp_path and path.name.startswith("onnx-" + "a" * 16) and path.suffix == ".onnx"


def test_key_includes_library_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new torch (or onnxruntime for the int8 export) is a new artefact."""
    base = artefact_key("a" * 16, "onnx-int8")
    real = _cache.library_versions
    monkeypatch.setattr(_cache, "library_versions", lambda *names: {**real(*names), "onnxruntime": "0.0.1"})
    assert artefact_key("a" * 16, "onnx-int8") != base


def _hold_lock(target: Path, seconds: float, then: bytes | None = None) -> threading.Thread:
    """Hold ``target``'s build lock for ``seconds`` in a thread (writing ``then`` to it first); return it."""
    held = threading.Event()

    def run() -> None:
        """Take the lock, signal, hold it, optionally publish the artefact, release."""
        lock_file = lock_path(target)
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_file)):
            held.set()
            time.sleep(seconds)
            if then is not None:
                target.write_bytes(then)

    worker = threading.Thread(target=run)
    worker.start()
    assert held.wait(10)
    return worker


def test_materialise_waits_for_a_live_builder(tmp_path: Path) -> None:
    """Another holder of the lock: wait for it, then take its file as a hit without building."""
    target = tmp_path / "thing.bin"
    worker = _hold_lock(target, 0.5, then=b"built elsewhere")
    built = []
    hit, waited = materialise(target, lambda tmp: built.append(tmp), poll_s=0.02)
    worker.join()
    assert hit and waited >= 0.4 and not built and target.read_bytes() == b"built elsewhere"


def test_materialise_does_not_wait_for_a_dead_builder(tmp_path: Path) -> None:
    """A builder killed while holding the lock leaves its lock file, but the kernel released the lock."""
    target = tmp_path / "thing.bin"
    lock_file = lock_path(target)
    lock_file.parent.mkdir(parents=True)
    holder = (
        "import sys, time\nfrom filelock import FileLock\n"
        "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait()
    assert lock_file.exists()
    hit, waited = materialise(target, lambda tmp: tmp.write_bytes(b"mine"), wait_s=30)
    assert not hit and waited < 5 and target.read_bytes() == b"mine"


def test_materialise_builds_anyway_after_waiting_too_long(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A build that outlasts ``wait_s``: the waiter logs a warning and builds its own copy."""
    target = tmp_path / "thing.bin"
    worker = _hold_lock(target, 1.5)
    with caplog.at_level(logging.WARNING, logger=_cache.__name__):
        hit, waited = materialise(target, lambda tmp: tmp.write_bytes(b"mine"), wait_s=0.3, poll_s=0.02)
    worker.join()
    assert not hit and 0.25 <= waited < 1.5 and target.read_bytes() == b"mine"
    assert "waiting" in caplog.text and "thing.bin" in caplog.text


def test_materialise_cleans_up_after_a_failed_build(tmp_path: Path) -> None:
    """A build that raises leaves neither the artefact nor its temp file, and releases the lock."""
    target = tmp_path / "thing.bin"

    def broken(tmp: Path) -> None:
        """Write half an artefact, then fail."""
        tmp.write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        materialise(target, broken)
    assert [p.name for p in tmp_path.iterdir()] == [LOCKS_DIR]
    FileLock(str(lock_path(target))).acquire(timeout=0)  # released: free at once
    hit, _ = materialise(target, lambda tmp: tmp.write_bytes(b"ok"))
    assert not hit and target.read_bytes() == b"ok"


def _materialise_in_child(target: str, calls: str, result: str, start: Any) -> None:
    """Child process: wait for the others, materialise ``target`` with a slow build that logs each call."""

    def build(tmp: Path) -> None:
        """Log the call, take a while, write the artefact."""
        with open(calls, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the other processes arrive meanwhile and must wait, not build
        tmp.write_bytes(b"artefact")

    start.wait(30)
    hit, waited = materialise(Path(target), build, poll_s=0.02)
    Path(result).write_text(json.dumps({"hit": hit, "waited": waited}))


def test_materialise_builds_once_across_processes(tmp_path: Path) -> None:
    """Three processes asking for the same artefact at once: one build, two hits, one whole file."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method (the build function is local to this test module)")
    ctx = mp.get_context("fork")
    target, calls = tmp_path / "cache" / "thing.bin", tmp_path / "calls.log"
    start = ctx.Barrier(3)
    results = [tmp_path / f"result-{i}.json" for i in range(3)]
    procs = [
        ctx.Process(target=_materialise_in_child, args=(str(target), str(calls), str(out), start)) for out in results
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(calls.read_text().splitlines()) == 1
    assert sorted(json.loads(out.read_text())["hit"] for out in results) == [False, True, True]
    assert target.read_bytes() == b"artefact"
    assert sorted(p.name for p in target.parent.iterdir()) == [LOCKS_DIR, "thing.bin"]
