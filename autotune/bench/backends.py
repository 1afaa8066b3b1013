"""`bench backends`: the bare image tower under each CPU backend, side by side on the same images and threads.

Every backend embeds the same in-memory batches (generated photos, fast-preprocessed) with the same intra-op
thread count. Each is built twice in a fresh artefact folder: the first build times the cold setup (export,
quantisation, compilation), the second the cached one. Throughput passes are interleaved across backends
(round-robin, median of ``repeats`` passes) so that a slow drift of the machine hits them all alike. Accuracy
is the guard's: raw and centred cosines of each backend's embeddings against eager fp32 on the same pixels.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from autotune.bench.common import env_restored, torch_threads
from autotune.data import make_dataset, open_source
from autotune.engine.config import logical_cores
from autotune.errors import ConfigError, one_line
from autotune.models import backends as model_backends
from autotune.models.calibration import CALIBRATION_IMAGES, needs_calibration, store_calibration
from autotune.models.facts import model_facts
from autotune.models.guard import DEFAULT_THRESHOLD, agreement
from autotune.preprocess import PreprocessSpec, fast_preprocess

DEFAULT_MODEL = "synthetic:clip-vit-base-patch32"
ROW_KEYS = (
    "backend",
    "images_per_s",
    "speedup_over_eager",
    "min_cosine",
    "mean_cosine",
    "centred_min_cosine",
    "centred_mean_cosine",
    "guard_ok",
    "setup_cold_s",
    "setup_cached_s",
    "cached_hit",
    "pass_images_per_s",
    "precision",
    "gflop_per_s",
    "peak_share",
    "kernels",
    "error",
)
# The matrix-product precision each CPU backend runs its linear layers in (what the roofline measured).
BACKEND_PRECISION = {
    "eager": "fp32", "compile": "fp32", "onnx": "fp32", "openvino": "fp32",
    "bf16": "bf16", "openvino-bf16": "bf16",
    "int8": "int8", "onnx-int8": "int8", "onnx-int8s": "int8", "openvino-int8": "int8",
}  # fmt: skip
# One row per backend, keys ROW_KEYS.
Row = dict[str, Any]


def bench_images(n: int, crop: int, seed: int = 11) -> np.ndarray:
    """``n`` generated photos (all labels), fast-preprocessed to uint8 ``[n, crop, crop, 3]``."""
    spec = PreprocessSpec(shortest_edge=crop, crop=crop)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        folder = Path(tmp) / "images"
        make_dataset(folder, n=n, seed=seed, workers=1)
        source = open_source(folder)
        out = np.empty((n, crop, crop, 3), np.uint8)
        for k, record in enumerate(source.records()[:n]):
            fast_preprocess(source.read_bytes(record), spec, out=out[k])
    return out


def _one_pass(backend: model_backends.Backend, pixels: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Embed all pixels once in batches; return (seconds, embeddings)."""
    start = time.perf_counter()
    parts = [backend.embed(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return time.perf_counter() - start, np.concatenate(parts)


def _backend_names(backends: list[str] | None) -> list[str]:
    """The backends to measure, eager first (the baseline), each once; unknown names are one ConfigError line."""
    names = list(backends) if backends else model_backends.available_cpu_backends()
    for name in names:
        if name not in model_backends.CPU_BACKEND_NAMES:
            known = ", ".join(model_backends.CPU_BACKEND_NAMES)
            raise ConfigError(f"unknown cpu backend {name!r}; choose from: {known}")
    return ["eager"] + [b for b in dict.fromkeys(names) if b != "eager"]


def _build_twice(spec: model_backends.BackendSpec, root: Path, row: Row, warmup: np.ndarray) -> model_backends.Backend:
    """Build cold then cached in ``root`` (setup times and the hit go in ``row``); return the cold one, warm."""
    start = time.perf_counter()
    backend = model_backends.build_backend(spec, cache_root=root)
    row["setup_cold_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    again = model_backends.build_backend(spec, cache_root=root)
    row["setup_cached_s"] = round(time.perf_counter() - start, 3)
    row["cached_hit"] = bool(again.cache_hit)
    del again
    gc.collect()
    backend.embed(warmup)  # warm-up: first-call allocations, lazy kernel selection
    backend.timings()
    return backend


def _build_all(
    names: list[str], model: str, batch: int, pixels: np.ndarray, folder: Path, say: Callable[[str], None]
) -> tuple[dict[str, Row], dict[str, model_backends.Backend]]:
    """A row per backend, and the backends that could be built (a failure is its row's ``error``).

    Statically quantised backends are calibrated on other generated photos than the ones timed and compared.
    """
    calibration = None
    if any(needs_calibration(n) for n in names):
        crop = pixels.shape[1]
        calibration = store_calibration(bench_images(CALIBRATION_IMAGES, crop, seed=12), folder).path
    rows: dict[str, Row] = {}
    built: dict[str, model_backends.Backend] = {}
    for name in names:
        row: Row = {key: None for key in ROW_KEYS}
        row["backend"] = name
        rows[name] = row
        reason = model_backends.backend_unavailable(name)
        if reason:
            row["error"] = reason
            say(f"{name}: skipped ({reason})")
            continue
        cal = calibration if needs_calibration(name) else None
        spec = model_backends.BackendSpec(model_id=model, backend=name, batch=batch, calibration=cal)
        try:
            built[name] = _build_twice(spec, folder / name, row, pixels[:batch])
            row["kernels"] = built[name].info().get("kernels")  # the runtimes that report them (OpenVINO)
            say(f"{name}: ready (setup {row['setup_cold_s']} s cold, {row['setup_cached_s']} s cached)")
        except Exception as exc:  # one broken backend must not hide the others' figures
            first = one_line(exc)
            row["error"] = f"{type(exc).__name__}: {first}"[:300]
            say(f"{name}: failed ({row['error']})")
    return rows, built


def _interleaved_passes(
    built: dict[str, model_backends.Backend], pixels: np.ndarray, batch: int, repeats: int,
    say: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Round-robin timed passes: seconds per pass per backend, and each backend's first embeddings."""
    seconds: dict[str, list[float]] = {name: [] for name in built}
    outputs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        for name, backend in built.items():
            took, emb = _one_pass(backend, pixels, batch)
            seconds[name].append(took)
            outputs.setdefault(name, emb)
        say(f"pass {r + 1}/{repeats}: " + ", ".join(f"{k} {len(pixels) / v[-1]:.2f}" for k, v in seconds.items()))
    return seconds, outputs


def _inductor_dir_restored() -> AbstractContextManager[None]:
    """Give the process its own TORCHINDUCTOR_CACHE_DIR back: compiled backends point it at the bench's folder."""
    return env_restored("TORCHINDUCTOR_CACHE_DIR")


def _fill_figures(
    rows: dict[str, Row], seconds: dict[str, list[float]], outputs: dict[str, np.ndarray], n: int, threshold: float
) -> float | None:
    """Rates, speed-ups over eager and agreement with eager into the rows; return eager's images/s."""
    reference = outputs.get("eager")
    eager_rate = n / statistics.median(seconds["eager"]) if "eager" in seconds else None
    for name, secs in seconds.items():
        row = rows[name]
        rate = n / statistics.median(secs)
        row["images_per_s"] = round(rate, 3)
        row["pass_images_per_s"] = [round(n / s, 3) for s in secs]
        row["speedup_over_eager"] = round(rate / eager_rate, 3) if eager_rate else None
        if reference is not None:
            figures = agreement(reference, outputs[name])
            row.update({k: round(v, 6) for k, v in figures.items()})
            row["guard_ok"] = bool(figures["min_cosine"] >= threshold)
    return eager_rate


def _fill_peaks(rows: dict[str, Row], model: str, threads: int) -> None:
    """GFLOP/s of each backend's run, and its share of the stored roofline's peak at the backend's precision.

    The share says whether a backend runs the hardware it should: bf16 far below the bf16 peak (AMX) while
    near the fp32 one means its products fell back to fp32 kernels. No stored roofline (`autotune bench
    roofline`), or one measured on another thread count: no share.
    """
    from autotune.machine import detect_machine
    from autotune.tuner.profile import model_arch
    from autotune.tuner.roofline import load_roofline, tower_flops

    gflop = tower_flops(model_facts(model).vision) / 1e9
    roof = load_roofline(detect_machine().machine_id, model_arch(model))
    for name, row in rows.items():
        precision = BACKEND_PRECISION.get(name)
        row["precision"] = precision
        if not row["images_per_s"]:
            continue
        row["gflop_per_s"] = round(row["images_per_s"] * gflop, 3)
        peak = next((p for p in roof.peaks if p.precision == precision), None) if roof else None
        if roof is not None and roof.cores == threads and peak is not None and peak.gflops:
            row["peak_share"] = round(row["gflop_per_s"] / peak.gflops, 3)


def bench_backends(
    model: str = DEFAULT_MODEL,
    batch: int = 32,
    threads: int | None = None,
    n: int = 64,
    backends: list[str] | None = None,
    *,
    repeats: int = 3,
    threshold: float = DEFAULT_THRESHOLD,
    pixels: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Throughput, setup time (cold, cached) and agreement with eager fp32 of each CPU backend, in one run.

    ``backends`` defaults to every backend available here (eager is always measured: it is the baseline).
    Returns ``rows`` (one dict per backend, keys :data:`ROW_KEYS`; a backend that fails has ``error`` set and
    no figures), ``best_backend`` (the fastest whose min cosine passes ``threshold``) and
    ``best_speedup_over_eager``, with the run's settings.

    Example:
        >>> out = bench_backends("synthetic:tiny", batch=8, n=16, backends=["eager", "onnx"])  # doctest: +SKIP
        >>> [r["backend"] for r in out["rows"]], out["best_backend"]  # doctest: +SKIP
        (['eager', 'onnx'], 'onnx')
    """
    say = log or (lambda _msg: None)
    threads = threads or logical_cores()
    if batch < 1 or n < 1 or repeats < 1 or threads < 1:
        raise ConfigError(f"batch, n, repeats and threads must be >= 1 (got {batch}, {n}, {repeats}, {threads})")
    names = _backend_names(backends)
    facts = model_facts(model)
    if pixels is None:
        pixels = bench_images(n, facts.preprocess.crop)
    pixels = np.ascontiguousarray(pixels[:n])
    with (
        _inductor_dir_restored(),
        torch_threads(threads),
        tempfile.TemporaryDirectory(prefix="bench-backends-cache-") as tmp,
    ):
        rows, built = _build_all(names, model, batch, pixels, Path(tmp), say)
        seconds, outputs = _interleaved_passes(built, pixels, batch, repeats, say)
        built.clear()
        gc.collect()
    eager_rate = _fill_figures(rows, seconds, outputs, len(pixels), threshold)
    _fill_peaks(rows, model, threads)
    ranked = [r for r in rows.values() if r["images_per_s"] and r["guard_ok"]]
    best = max(ranked, key=lambda r: r["images_per_s"]) if ranked else None
    return {
        "model": model,
        "batch": batch,
        "threads": threads,
        "n": int(len(pixels)),
        "repeats": repeats,
        "threshold": threshold,
        "rows": list(rows.values()),
        "eager_images_per_s": round(eager_rate, 3) if eager_rate else None,
        "best_backend": best["backend"] if best else None,
        "best_speedup_over_eager": best["speedup_over_eager"] if best else None,
    }
