"""`bench vendor`: OpenVINO's own auto-configuration beside ours, on the very artefact our replicas load.

OpenVINO ships `benchmark_app`, whose ``-hint throughput`` picks its own streams and threads and runs the model
alone (no decoding, no preprocessing, random inputs). This bench runs it on the IR (or ONNX export) an OpenVINO
replica of the configuration loads, at the configuration's batch size, then our bare forward with the same
configuration (every replica in a process of its own, embedding in-memory batches at once), then our full
retrieval of the corpus (decode and preprocessing included), interleaved ``repeats`` times; medians and ratios.
ONNX Runtime's wheel ships no `onnxruntime_perf_test`, so only OpenVINO backends have a vendor figure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data import open_source
from autotune.engine.config import EngineConfig
from autotune.engine.runner import embed_queries, run_scan
from autotune.engine.workers import core_plan
from autotune.errors import AutotuneError, ConfigError
from autotune.models import backends as model_backends
from autotune.models.calibration import calibration_for
from autotune.models.facts import model_facts
from autotune.progress import Log, quiet

VENDOR_SECONDS = 15  # benchmark_app's run time (-t): long enough for its throughput figure to settle
BARE_BATCHES = 12  # batches each replica embeds in one timed bare pass


def benchmark_app() -> str:
    """Path of OpenVINO's `benchmark_app` (beside this Python, else on PATH); one line when it is missing."""
    here = Path(sys.executable).parent / "benchmark_app"
    found = str(here) if here.is_file() else shutil.which("benchmark_app")
    if not found:
        raise ConfigError("bench vendor needs OpenVINO's benchmark_app (pip install openvino); it is not installed")
    return found


def parse_benchmark_app(text: str) -> dict[str, Any]:
    """Throughput and the configuration `benchmark_app` chose, from its report; one line when there is none.

    Example:
        >>> parse_benchmark_app("  NUM_STREAMS: 2\\n  INFERENCE_NUM_THREADS: 2\\n[ INFO ] Throughput:   81.52 FPS")
        {'vendor_images_per_s': 81.52, 'streams': 2, 'threads': 2, 'hint': None, 'requests': None, 'pinned': None}
    """
    rate = re.search(r"Throughput:\s*([\d.]+)\s*FPS", text)
    if rate is None:
        tail = " ".join(text.strip().splitlines()[-2:])[-200:]
        raise AutotuneError(f"benchmark_app reported no throughput: {tail or 'no output'}")

    def num(pattern: str) -> int | None:
        """The integer after ``pattern`` in the report's device properties, if printed."""
        hit = re.search(pattern + r":\s*(\d+)", text)
        return int(hit.group(1)) if hit else None

    hint = re.search(r"\bPERFORMANCE_HINT:\s*(\w+)", text)
    pinned = re.search(r"\bENABLE_CPU_PINNING:\s*(\w+)", text)
    return {
        "vendor_images_per_s": float(rate.group(1)),
        "streams": num(r"\bNUM_STREAMS"),
        "threads": num(r"\bINFERENCE_NUM_THREADS"),
        "hint": hint.group(1) if hint else None,
        "requests": num(r"\bOPTIMAL_NUMBER_OF_INFER_REQUESTS"),
        "pinned": pinned.group(1) == "True" if pinned else None,
    }


def vendor_run(artefact: str, batch: int, size: int, seconds: int = VENDOR_SECONDS) -> dict[str, Any]:
    """`benchmark_app -hint throughput` on ``artefact`` at ``batch`` images a request, on this process's cores.

    The hint chooses streams, threads and pinning itself (benchmark_app refuses -nthreads beside a hint), so the
    vendor gets every core this process may use, as the engine's configurations do.
    """
    cmd = [benchmark_app(), "-m", artefact, "-d", "CPU", "-hint", "throughput", "-t", str(seconds),
           "-shape", f"[{batch},3,{size},{size}]"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 6 + 120, check=False)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[-200:]
        raise AutotuneError(f"benchmark_app failed (exit {proc.returncode}): {tail}")
    return {**parse_benchmark_app(proc.stdout), "command": " ".join(cmd[1:])}


def _bare_replica(
    spec: model_backends.BackendSpec, pixels: np.ndarray, start: Any, out: Any, cores: tuple[int, ...] | None
) -> None:
    """One replica's bare forward: build (on ``cores`` if given), warm up, wait for the others, embed
    ``BARE_BATCHES`` batches."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
    backend = model_backends.build_backend(spec)
    batch = spec.batch or len(pixels)
    backend.embed(pixels[:batch])
    start.wait()
    t0 = time.perf_counter()
    for k in range(BARE_BATCHES):
        i = (k * batch) % max(len(pixels) - batch + 1, 1)
        backend.embed(pixels[i : i + batch])
    out.put((t0, time.perf_counter(), BARE_BATCHES * batch))


def bare_forward(config: EngineConfig, model: str, pixels: np.ndarray, calibration: str | None) -> float:
    """Images/s of ``config``'s replicas embedding in-memory batches at once, each in a process of its own."""
    ctx = mp.get_context("spawn")
    spec = model_backends.BackendSpec(model_id=model, backend=config.cpu_backend, batch=config.cpu_batch,
                                      threads=config.cpu_threads, calibration=calibration,
                                      streams=config.cpu_streams)  # fmt: skip
    start, out = ctx.Barrier(config.cpu_models), ctx.Queue()
    _producers, placed = core_plan(config)  # pinned where the configuration pins its replicas, as the engine does
    procs = [ctx.Process(target=_bare_replica, args=(spec, pixels, start, out, placed[r]))
             for r in range(config.cpu_models)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        spans = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    begin, end = min(s[0] for s in spans), max(s[1] for s in spans)
    return sum(s[2] for s in spans) / (end - begin)


def bench_vendor(
    config: EngineConfig,
    *,
    dataset: str,
    model: str,
    images: int = 2000,
    repeats: int = 3,
    seconds: int = VENDOR_SECONDS,
    log: Log | None = None,
) -> dict[str, Any]:
    """The vendor's model-only figure, our bare forward and our full retrieval with ``config``, interleaved.

    Example:
        >>> cfg = EngineConfig(producers=1, cpu_models=2, cpu_threads=1, cpu_batch=48, cpu_backend="openvino-int8")
        >>> res = bench_vendor(cfg, dataset="corpus/", model="synthetic:clip-vit-base-patch32")  # doctest: +SKIP
        >>> res["bare_over_vendor"], res["full_over_vendor"]  # doctest: +SKIP
    """
    say = log or quiet
    if not config.cpu_models or not config.cpu_backend.startswith("openvino"):
        raise ConfigError(
            f"bench vendor compares with OpenVINO's own tuner: the configuration runs {config.cpu_backend} "
            "(pass a profile or --config with an openvino backend)"
        )
    tool = benchmark_app()
    source = open_source(dataset)
    records = source.records()[:images]
    cal = calibration_for(source, model, config.cpu_backend)
    spec = model_backends.BackendSpec(model_id=model, backend=config.cpu_backend, batch=config.cpu_batch,
                                      threads=config.cpu_threads, calibration=cal)  # fmt: skip
    artefact = str(model_backends.build_backend(spec).artefact)  # builds (or finds) what the replicas load
    facts = model_facts(model)
    size = int(facts.image["crop"])
    pixels = _pixels(source, records, facts.preprocess, config.cpu_batch * 2)
    query = embed_queries(model, ["a photo of Felis catus"])
    runs: dict[str, list[float]] = {"vendor": [], "bare": [], "full": []}
    chosen: dict[str, Any] = {}
    for r in range(repeats):
        chosen = vendor_run(artefact, config.cpu_batch, size, seconds)
        runs["vendor"].append(chosen.pop("vendor_images_per_s"))
        runs["bare"].append(bare_forward(config, model, pixels, cal))
        res = run_scan(source, model, config, queries=query, records=records, calibration=cal)
        runs["full"].append(res.images_per_s)
        say(f"pass {r + 1}/{repeats}: vendor {runs['vendor'][-1]:.1f}, bare {runs['bare'][-1]:.1f}, full "
            f"{runs['full'][-1]:.1f} images/s")  # fmt: skip
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "config": config.describe(),
        "artefact": artefact,
        "vendor_tool": tool,
        "vendor_config": chosen,
        "batch": config.cpu_batch,
        "images": len(records),
        "vendor_images_per_s": round(med["vendor"], 2),
        "bare_images_per_s": round(med["bare"], 2),
        "full_images_per_s": round(med["full"], 2),
        "bare_over_vendor": round(med["bare"] / med["vendor"], 3),
        "full_over_vendor": round(med["full"] / med["vendor"], 3),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


def _pixels(source: Any, records: list[Any], spec: Any, n: int) -> np.ndarray:
    """``n`` images of the corpus, fast-preprocessed to uint8 ``[n, crop, crop, 3]`` (the bare pass's input)."""
    from autotune.preprocess import fast_preprocess

    out = np.empty((n, spec.crop, spec.crop, 3), np.uint8)
    for k in range(n):
        fast_preprocess(source.read_bytes(records[k % len(records)]), spec, out=out[k])
    return out
