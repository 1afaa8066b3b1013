"""Measure the machine's limit for a model: matrix-product throughput per precision at the image tower's shapes.

A ViT image tower spends nearly all its arithmetic in four matrix products per layer (query/key/value, output,
and the two MLP products). Timing those products alone, at the tower's own shapes, on every core, tells how many
images per second the hardware could embed if nothing else cost anything: the *ceiling*. Each precision the
backends can use is timed (fp32; bf16, which runs on AMX tiles where the CPU has them; int8 through
``torch._int_mm``, and through OpenVINO's quantised products where it is installed, the faster kept), with the
kernel that ran it, and the preprocessing cost per image per core is
measured with the fast path, so the ceiling of the whole scan (model + preprocessing sharing the cores) is
stated too. The record and its store are :mod:`autotune.tuner.roofline`.

Example:
    >>> roof = measure_roofline("synthetic:clip-vit-base-patch32")  # doctest: +SKIP
    >>> roof.ceiling_images_per_s, roof.share(85.0)  # doctest: +SKIP
    (187.4, 0.45)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from autotune.errors import ConfigError, one_line
from autotune.progress import Log, quiet
from autotune.tuner.roofline import PRECISIONS, PrecisionPeak, Roofline, cpu_isa, tower_flops, tower_products

# Seconds each precision is timed for (after a warm-up call), in passes of one image's products whose fastest
# is the peak: several passes, so that a slow moment of a shared machine is outrun, yet the whole roofline
# takes about ten seconds.
TIME_PER_PRECISION_S = 3.0


@contextlib.contextmanager
def _captured_stdout() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 1 (oneDNN's verbose lines) into a list of lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(1)
        try:
            os.dup2(tmp.fileno(), 1)
            yield lines
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _kernel_of(run: Callable[[], Any]) -> str | None:
    """The oneDNN implementation one call ran (``brg_matmul:avx512_core_amx``...), or None if not oneDNN's."""
    import torch

    try:
        with _captured_stdout() as lines, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            run()
    except AssertionError:  # a torch built without oneDNN's verbose mode refuses the scope
        return None
    for line in lines:
        parts = line.split(",")
        # onednn_verbose,[v1,]primitive,exec,cpu,<kind>,<implementation>,...
        if "exec" in parts and len(parts) > parts.index("exec") + 3:
            i = parts.index("exec")
            # int8 ``_int_mm`` runs oneDNN's gemm API, which names no implementation.
            return f"{parts[i + 2]}:{parts[i + 3] or 'unnamed'}"
    return None


def _operands(precision: str, products: list[tuple[int, int, int, int]]) -> list[tuple[Any, Any, int]]:
    """Random operands of each product in a precision, with how many times a batch runs it."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for rows, inner, cols, count in products:
        if precision == "int8":
            a = torch.randint(-64, 64, (rows, inner), dtype=torch.int8, generator=gen)
            b = torch.randint(-64, 64, (inner, cols), dtype=torch.int8, generator=gen)
        else:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            a = torch.randn(rows, inner, generator=gen).to(dtype)
            b = torch.randn(inner, cols, generator=gen).to(dtype)
        out.append((a, b, count))
    return out


def _product(precision: str) -> Callable[[Any, Any], Any]:
    """The function that multiplies two operands of a precision."""
    import torch

    return torch._int_mm if precision == "int8" else torch.matmul  # int8 x int8 -> int32 (oneDNN on CPU)


def measure_precision(
    precision: str, products: list[tuple[int, int, int, int]], threads: int, seconds: float = TIME_PER_PRECISION_S
) -> PrecisionPeak:
    """Peak GFLOP/s of one image's products in a precision on ``threads`` threads: the fastest pass in ``seconds``."""
    from autotune.bench.common import torch_threads

    with torch_threads(threads):
        try:
            ops = _operands(precision, products)
            mul = _product(precision)
            for a, b, _ in ops:  # warm-up: first calls pick and prepare kernels
                mul(a, b)
            big = max(ops, key=lambda op: op[0].numel() * op[1].shape[1])  # the product that dominates
            kernel = _kernel_of(lambda: mul(big[0], big[1]))
        except (RuntimeError, NotImplementedError, AttributeError) as exc:
            return PrecisionPeak(precision, threads, None, error=one_line(exc, typed=True))
        flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] * n for a, b, n in ops)
        # A ceiling is the best the machine does, not its average: a shared VM's speed drifts (2-3x within the
        # hour was seen here), and a mean taken in a slow moment put runs above their own "ceiling". Each
        # pass (one image's products) is timed alone and the fastest pass is the peak.
        fastest, start = float("inf"), time.perf_counter()
        while True:
            t0 = time.perf_counter()
            for a, b, n in ops:
                for _ in range(n):
                    mul(a, b)
            fastest = min(fastest, time.perf_counter() - t0)
            if time.perf_counter() - start >= seconds:
                break
    return PrecisionPeak(precision, threads, round(flops / fastest / 1e9, 1), kernel=kernel)


def _product_chains(products: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """The products arranged into chains whose widths follow on (MLP up then down...), every count used.

    Each chain starts from an input of its first product's shape; at each step the product with the most
    uses left among those that take the current width comes next.
    """
    left = {(rows, inner, cols): count for rows, inner, cols, count in products}
    chains: list[list[tuple[int, int, int]]] = []
    while any(left.values()):
        shape: tuple[int, int, int] | None = max((s for s, n in left.items() if n), key=lambda s: left[s])
        chain = []
        while shape is not None:
            chain.append(shape)
            left[shape] -= 1
            fits = [s for s, n in left.items() if n and s[1] == shape[2]]
            shape = max(fits, key=lambda s: left[s]) if fits else None
        chains.append(chain)
    return chains


def _openvino_installed() -> bool:
    """Whether OpenVINO can run here (the backends' registry says; nothing is imported)."""
    from autotune.models.backends import backend_unavailable  # the backends package imports torch: late

    return backend_unavailable("openvino") is None


def measure_openvino_int8(
    products: list[tuple[int, int, int, int]], threads: int, seconds: float = TIME_PER_PRECISION_S
) -> PrecisionPeak:
    """Peak int8 GFLOP/s through OpenVINO's CPU plugin (quantised matrix products, as an NNCF model runs them).

    ``torch._int_mm`` goes through oneDNN's gemm API, which does not use AMX; OpenVINO's int8 fully connected
    layers do (``brgemm_avx512_amx_I8``), and ran 1.65-2.2x faster on the same 2-core Xeon. Each product's
    input is fake-quantised as NNCF's models are, and the products are chained so that no large output is
    copied out per product; the fastest of several whole-pass calls in ``seconds`` is the peak.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from autotune.models.backends import product_kernels

    gen = np.random.default_rng(0)
    lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
    inputs, outputs, flops = [], [], 0
    for chain in _product_chains(products):
        rows, inner, _cols = chain[0]
        x = ops.parameter([rows, inner], np.float32)
        inputs.append(x)
        h: Any = x
        for _rows, k, n in chain:
            weights = gen.integers(-127, 128, size=(n, k), dtype=np.int8)
            scaled = ops.multiply(ops.convert(ops.constant(weights), np.float32), ops.constant(np.float32(1 / 256)))
            h = ops.matmul(ops.fake_quantize(h, lo, hi, lo, hi, 256), scaled, False, True)
            flops += 2 * rows * k * n
        outputs.append(h)
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    compiled = ov.Core().compile_model(ov.Model(outputs, inputs), "CPU", config)
    kinds = product_kernels(compiled)
    request = compiled.create_infer_request()
    feed = {i: gen.standard_normal(tuple(x.get_output_partial_shape(0).to_shape())).astype(np.float32)
            for i, x in enumerate(inputs)}  # fmt: skip
    request.infer(feed)  # warm-up: kernels and weight reorders
    fastest, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or fastest == float("inf"):
        t0 = time.perf_counter()
        request.infer(feed)
        fastest = min(fastest, time.perf_counter() - t0)
    kernel = "openvino:" + "+".join(sorted(kinds)) if kinds else "openvino"
    return PrecisionPeak("int8", threads, round(flops / fastest / 1e9, 1), kernel=kernel)


def preprocess_seconds_per_image(dataset: str | None, model: str, n: int = 64, split: str | None = None) -> float:
    """Seconds to decode and preprocess one image of the dataset with the fast path, on one core (best of 3)."""
    from autotune.bench.common import torch_threads
    from autotune.bench.preprocess import _read_corpus
    from autotune.data import open_source
    from autotune.defaults import default_dataset
    from autotune.errors import BadImageError
    from autotune.models.facts import model_facts
    from autotune.preprocess import fast_preprocess
    from autotune.progress import silent

    source = open_source(str(dataset) if dataset else str(default_dataset()), split=split)
    spec = model_facts(model).preprocess
    datas, _ = _read_corpus(source, n, silent)  # unreadable files are left out, as the preprocess bench does
    decodable = []
    for data in datas:  # broken images are skipped: the figure is the cost of the ones a scan embeds
        try:
            fast_preprocess(data, spec)
            decodable.append(data)
        except BadImageError:
            continue
    datas = decodable
    if not datas:
        raise ConfigError("the dataset has no decodable images to time the preprocessing on")
    best = float("inf")
    with torch_threads(1):
        for _ in range(3):  # noise on a shared machine only ever adds time: keep the best pass
            start = time.perf_counter()
            for data in datas:
                fast_preprocess(data, spec)
            best = min(best, (time.perf_counter() - start) / len(datas))
    return best


def measure_roofline(
    model: str = "synthetic:clip-vit-base-patch32",
    dataset: str | None = None,
    *,
    split: str | None = None,
    seconds: float = TIME_PER_PRECISION_S,
    log: Log | None = None,
) -> Roofline:
    """Measure this machine's roofline for a model (its image tower's shapes), on every core.

    Example:
        >>> roof = measure_roofline("synthetic:tiny", seconds=0.1)  # doctest: +SKIP
        >>> sorted(roof.to_dict()["ceilings_images_per_s"])  # doctest: +SKIP
        ['bf16', 'fp32', 'int8']
    """
    import torch

    from autotune.engine.config import logical_cores
    from autotune.machine import detect_machine
    from autotune.models.facts import model_facts
    from autotune.tuner.profile import model_arch

    say = log or quiet
    facts = model_facts(model)
    cores = logical_cores()
    products = tower_products(facts.vision)
    peaks = []
    for precision in PRECISIONS:
        peak = measure_precision(precision, products, cores, seconds)
        if precision == "int8" and _openvino_installed():
            # The backends' int8 runs in OpenVINO or ONNX Runtime, not torch: the machine's int8 peak is the faster.
            try:
                peak = max(peak, measure_openvino_int8(products, cores, seconds), key=lambda p: p.gflops or 0.0)
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot build this model leaves torch's figure
                say(f"int8 through OpenVINO: not measured ({one_line(exc, typed=True)})")
        say(f"{precision}: " + (f"{peak.gflops} GFLOP/s ({peak.kernel or 'not oneDNN'})" if peak.gflops
                                else f"not measured: {peak.error}"))  # fmt: skip
        peaks.append(peak)
    pre = preprocess_seconds_per_image(dataset, model, split=split)
    say(f"preprocessing: {pre * 1000:.2f} ms per image per core")
    return Roofline(
        machine_id=detect_machine().machine_id, arch=model_arch(model), cores=cores, isa=cpu_isa(),
        gflop_per_image=round(tower_flops(facts.vision) / 1e9, 4), peaks=tuple(peaks),
        preprocess_s_per_image_per_core=round(pre, 6), torch_version=torch.__version__,
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
