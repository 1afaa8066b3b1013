"""Exported backends: ONNX Runtime and OpenVINO on a cached ONNX export of the image tower (CPU only).

The ONNX export has a dynamic batch axis, so the batch size is not part of its key; its int8 copy and
OpenVINO's compiled blobs are cached beside it. A replica whose artefacts are cached imports neither torch nor
transformers: normalisation is numpy, and the model's facts come from their cached sidecar.

onnxruntime, openvino and torch are imported where they are used (each is optional or heavy), and so is
:mod:`autotune.models.loading`, which imports torch and transformers itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.models.backends._base import Backend, BackendSpec, _quiet, _Timed
from autotune.models.backends._cache import artefact_path, backends_cache, materialise
from autotune.models.calibration import load_calibration
from autotune.models.facts import model_facts

ONNX_OPSET = 17


def _export_onnx(model_id: str, dest: Path) -> None:
    """Export the fp32 image tower to ONNX at ``dest``, with a dynamic batch axis (legacy exporter)."""
    import torch

    from autotune.models.loading import image_tower, load_clip

    loaded = load_clip(model_id)
    tower = image_tower(loaded)
    side = loaded.image_size
    example = torch.zeros(2, 3, side, side)
    with _quiet(), torch.inference_mode():
        torch.onnx.export(
            tower,
            (example,),
            str(dest),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["embeddings"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )


def _quantise_onnx(source: Path, dest: Path) -> None:
    """Dynamic int8 quantisation of an ONNX export: per-channel qint8 weights of the MatMuls only.

    Measured on ViT-B/32 (random weights, AMX Xeon, 2 threads): MatMul-only per-channel is both faster (24.7
    vs 18.4 images/s) and closer to fp32 (centred cosine 0.983 vs 0.975) than the default settings, which
    also quantise the patch-embedding convolution per tensor.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source),
            str(dest),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )


class _CalibrationReader:
    """ONNX Runtime's calibration input: the calibration pixels, normalised, a few images per run."""

    def __init__(self, pixels: np.ndarray, normalise: Any, input_name: str, batch: int = 8) -> None:
        """Batches of ``batch`` images, normalised by the backend's own numpy recipe."""
        self.batches = [normalise(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when all were given."""
        return {self.input_name: self.batches.pop(0)} if self.batches else None

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some calibration methods
        """Nothing to rewind: each batch is given once."""


def _quantise_onnx_static(source: Path, dest: Path, reader: _CalibrationReader) -> None:
    """Static int8 (QDQ): per-channel int8 MatMul weights, uint8 activations with ranges from the calibration set.

    uint8 activations with int8 weights (U8S8) is what ONNX Runtime's x86 kernels run fastest on VNNI and AMX
    CPUs; only the MatMuls are quantised, as for the dynamic backend (the patch convolution and the layer norms
    stay fp32, where most of the accuracy loss of full quantisation comes from).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            str(source),
            str(dest),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


#: NNCF's quantisation preset for ``openvino-int8`` (part of the artefact's key). PERFORMANCE quantises the
#: activations symmetrically, so the int8 products need no zero-point correction: on the 2-core AMX Xeon the
#: ViT-B/32 stand-in ran 1.15x faster bare than with the transformer default (MIXED: asymmetric activations;
#: 84.7 and 82.5 against 72.1 images/s, interleaved in one process), with the same agreement (min cosine
#: 0.9959 against 0.9956 on 64 images).
OPENVINO_INT8_PRESET = "performance"


def _quantise_openvino(source: Path, folder: Path, pixels: np.ndarray, normalise: Any) -> Path:
    """NNCF post-training int8 quantisation of the OpenVINO model (transformer type, symmetric activations),
    saved as IR in ``folder``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(source))
    data = nncf.Dataset([normalise(pixels[i : i + 1]) for i in range(len(pixels))])
    with _quiet():
        quantised = nncf.quantize(
            model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(pixels),
            preset=nncf.QuantizationPreset(OPENVINO_INT8_PRESET),
        )  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)  # whatever a crashed first quantisation left
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / "model.xml"
    ov.save_model(quantised, str(xml), compress_to_fp16=False)  # the weights go beside it, in model.bin
    return xml


class _ExportedBackend(_Timed, Backend):
    """Shared setup of the ONNX Runtime and OpenVINO backends: the cached ONNX export (and its int8 copy).

    A cache hit runs no torch at all (normalisation is numpy), so a replica's worker never imports it.
    """

    def _prepare(self, spec: BackendSpec, cache_root: Path | None, *, int8: bool | str) -> Path:
        """Materialise the export the backend runs; sets normalisation, size, cache_hit; returns its path.

        ``int8``: False (the fp32 export), True (its dynamic int8 copy), "static" (its QDQ copy calibrated on
        ``spec.calibration``) or "openvino" (the fp32 export; the NNCF copy is made by the OpenVINO backend).
        """
        self.name = spec.backend
        facts = model_facts(spec.model_id)
        self.facts = facts
        self._rows: tuple[int, np.ndarray, np.ndarray] | None = None
        self.embed_dim = facts.embed_dim
        root = backends_cache(cache_root)
        fp32 = artefact_path(root, facts.weights_hash, "onnx", ".onnx", opset=ONNX_OPSET)
        hit, waited = materialise(fp32, lambda tmp: _export_onnx(spec.model_id, tmp))
        path = fp32
        self.calibration: str | None = None
        if int8 is True:
            path = artefact_path(root, facts.weights_hash, "onnx-int8", ".onnx", opset=ONNX_OPSET, scheme="pc-matmul")
            hit8, waited8 = materialise(path, lambda tmp: _quantise_onnx(fp32, tmp))
            hit, waited = hit and hit8, waited + waited8
        elif int8 == "static":
            pixels, digest = load_calibration(spec.calibration, spec.backend)
            self.calibration = digest
            path = artefact_path(
                root, facts.weights_hash, "onnx-int8s", ".onnx", opset=ONNX_OPSET, scheme="qdq-u8s8-pc-matmul",
                calibration=digest,
            )  # fmt: skip
            reader = lambda: _CalibrationReader(pixels, self._pixels, "pixel_values")  # noqa: E731
            hit8, waited8 = materialise(path, lambda tmp: _quantise_onnx_static(fp32, tmp, reader()))
            hit, waited = hit and hit8, waited + waited8
        self.cache_hit, self.wait_seconds = hit, waited
        self.artefact = str(path)
        self.threads = _intra_op_threads(spec)
        return path

    def _pixels(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> contiguous float32 NCHW ``(x/255 - mean)/std``, bit for bit as torch's ``normalize``.

        numpy, so that the replica needs no torch: :func:`autotune.preprocess.normalize`'s recipe (float64
        constants rounded to float32, tiled along a row; one cast, one in-place multiply, one in-place add, in
        float32), hence the same bits (a test compares them).
        """
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected uint8 NHWC [N, H, W, 3], got {tuple(batch.shape)}")
        n, height, width, _ = batch.shape
        if self._rows is None or self._rows[0] != width:
            std = np.asarray(self.facts.std, dtype=np.float64)
            mean = np.asarray(self.facts.mean, dtype=np.float64)
            scale = np.tile((1.0 / (255.0 * std)).astype(np.float32), width)
            self._rows = (width, scale, np.tile((-mean / std).astype(np.float32), width))
        _, scale, bias = self._rows
        rows = batch.reshape(n, height, width * 3).astype(np.float32)
        rows *= scale
        rows += bias
        return np.ascontiguousarray(rows.reshape(n, height, width, 3).transpose(0, 3, 1, 2))

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Run the runtime on a float32 NCHW batch."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Setup figures, plus the runtime's intra-op thread count."""
        return {**super().info(), "intra_op_threads": self.threads}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalise, run the exported tower, return float32 numpy (already unit rows)."""
        t0 = time.perf_counter()
        x = self._pixels(batch)
        t1 = time.perf_counter()
        out = np.asarray(self._run(x), dtype=np.float32)
        self._times["transfer"] += t1 - t0
        self._times["forward"] += time.perf_counter() - t1
        return out


def _intra_op_threads(spec: BackendSpec) -> int:
    """The replica's intra-op thread count: the spec's (a scan's replicas), else torch's (benches set that)."""
    if spec.threads:
        return max(1, int(spec.threads))
    try:
        import torch

        return max(1, int(torch.get_num_threads()))
    except Exception:  # pragma: no cover
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


class OnnxRuntimeBackend(_ExportedBackend):
    """ONNX Runtime (CPU execution provider) on the cached export: fp32 (``onnx``), dynamic int8 (``onnx-int8``)
    or static int8 calibrated on the database (``onnx-int8s``).

    Intra-op threads follow the consumer's thread count; spinning is off so idle workers leave the cores to
    the producers the engine runs beside them.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        """Materialise the export (and its int8 copy), then open one CPU session on it."""
        import onnxruntime as ort

        start = time.perf_counter()
        super().__init__()
        int8: bool | str = "static" if spec.backend == "onnx-int8s" else spec.backend == "onnx-int8"
        path = self._prepare(spec, cache_root, int8=int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.setup_seconds = time.perf_counter() - start

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One session run on the float32 NCHW batch."""
        return self.session.run(None, {self.input_name: x})[0]


#: OpenVINO's runtime layer types that carry the matrix products (what ``kernels`` reports on).
_PRODUCT_LAYERS = frozenset({"FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution"})


def product_kernels(compiled: Any) -> dict[str, int]:
    """How many of a compiled OpenVINO model's matrix products ran on each CPU-plugin kernel.

    E.g. ``{"brgemm_avx512_amx_I8": 72}``: ``brgemm_*_amx_*`` means AMX, ``jit_`` or ``gemm_`` that it is not used.
    """
    kernels: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in _PRODUCT_LAYERS and "primitiveType" in rt:
            kind = rt["primitiveType"].astype(str)
            kernels[kind] = kernels.get(kind, 0) + 1
    return kernels


def _placed_alone(threads: int) -> bool:
    """Whether this process was given exactly ``threads`` cores of the machine (the engine pinned its replica)."""
    try:
        mask = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return False
    return len(mask) == threads < (os.cpu_count() or threads)


def _cpu_signature() -> str:
    """12 hex characters naming this CPU's model and instruction sets (compiled blobs are kept per CPU kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        text = f"{platform.machine()} {platform.processor()}"
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    summary = "\n".join(dict.fromkeys(lines)) or text  # each distinct line once (one per core otherwise)
    return hashlib.sha256(summary.encode()).hexdigest()[:12]


class OpenVinoBackend(_ExportedBackend):
    """OpenVINO (CPU plugin) on the cached fp32 export, with an fp32 or bf16 inference precision, or on its
    NNCF int8 copy calibrated on the database (``openvino-int8``: int8 matrix products, bf16 elsewhere).

    ``openvino-bf16`` asks for bfloat16 execution, which the CPU plugin runs on AMX / AVX512-BF16 and quietly
    replaces by fp32 on CPUs without them. One stream in latency mode by default; ``spec.streams`` > 1 compiles
    for that many streams in throughput mode, which share the consumer's threads, and splits each batch among
    them (OpenVINO's own throughput layout, inside one replica). Its threads are not pinned (the engine places
    replicas).

    The compiled model is cached too, through OpenVINO's own model cache (``CACHE_DIR``): importing it takes
    0.3 s where compiling the ViT-B/32 export takes 1.6 s. Its folder is named by a key of the export, the
    compile settings, the OpenVINO version and the CPU; the first compile runs under a build lock (one
    writer per blob) and a ``.done`` marker tells later setups (``cache_hit``) that the blob is there.
    OpenVINO checks a blob on import and recompiles one it cannot read.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        """Materialise the export, then compile it once per setting and CPU kind (later setups import the blob)."""
        import openvino as ov

        start = time.perf_counter()
        super().__init__()
        path = self._prepare(spec, cache_root, int8=False)
        root = backends_cache(cache_root)
        if spec.backend == "openvino-int8":
            path = self._quantised(spec, root, path)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            # int8 runs its non-quantised ops (attention, norms, activations) at bf16 too: on an AMX Xeon that
            # took ViT-B/32 from 64 to 71 images/s bare; a CPU without bf16 runs them in fp32 (the guard checks).
            "INFERENCE_PRECISION_HINT": "f32" if spec.backend == "openvino" else "bf16",
            "PERFORMANCE_HINT": "LATENCY" if spec.streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": spec.streams,
            # The plugin pins its threads from the first core of the process's mask, so two replicas side by side
            # ran on the same core: ViT-B/32 int8, two 1-thread processes, 37-39 images/s in all pinned, 90-97
            # not (and 64-77 for one 2-thread process). Where cores go is the engine's choice: only a replica the
            # engine placed on cores of its own (pin_cores, pin_replicas) lets the plugin pin within them.
            "ENABLE_CPU_PINNING": _placed_alone(self.threads),
        }
        settings = {key.lower(): value for key, value in config.items()}
        marker = artefact_path(
            root, self.facts.weights_hash, "openvino", ".done", source=path.relative_to(root).as_posix(),
            cpu=_cpu_signature(), **settings,
        )
        blobs = root / "openvino" / marker.stem
        compiled: list[Any] = []

        def build(tmp: Path) -> None:
            """Compile the export, writing OpenVINO's blob into a clean folder; then the marker at ``tmp``."""
            shutil.rmtree(blobs, ignore_errors=True)  # whatever a crashed first compile left
            blobs.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blobs)})
            compiled.append(core.compile_model(str(path), "CPU", config))
            tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}), encoding="utf-8")

        hit, waited = materialise(marker, build)
        if not compiled:  # the blob was there (or another process just wrote it): import it
            core.set_property({"CACHE_DIR": str(blobs)})
            compiled.append(core.compile_model(str(path), "CPU", config))
        self.cache_hit, self.wait_seconds = self.cache_hit and hit, self.wait_seconds + waited
        self.compiled = compiled[0]
        self.request = self.compiled.create_infer_request()
        self.streams = spec.streams
        # One request per stream: a batch is split among them and run at once (OpenVINO's throughput layout).
        self.requests = [self.request] + [self.compiled.create_infer_request() for _ in range(spec.streams - 1)]
        self.setup_seconds = time.perf_counter() - start

    def _quantised(self, spec: BackendSpec, root: Path, fp32: Path) -> Path:
        """The NNCF int8 IR of the export, calibrated on ``spec.calibration`` (made once, under a build lock)."""
        pixels, digest = load_calibration(spec.calibration, spec.backend)
        self.calibration = digest
        marker = artefact_path(
            root, self.facts.weights_hash, "openvino-int8", ".done", calibration=digest, preset=OPENVINO_INT8_PRESET
        )
        folder = root / "openvino-int8" / marker.stem

        def build(tmp: Path) -> None:
            """Quantise into the IR folder, then write the marker at ``tmp``."""
            _quantise_openvino(fp32, folder, pixels, self._pixels)
            tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}), encoding="utf-8")

        hit, waited = materialise(marker, build)
        self.cache_hit, self.wait_seconds = self.cache_hit and hit, self.wait_seconds + waited
        self.artefact = str(folder / "model.xml")
        return folder / "model.xml"

    def info(self) -> dict[str, Any]:
        """Setup figures, plus the kernels the CPU plugin chose for the matrix products (``kernels``).

        E.g. ``{"brgemm_avx512_amx_I8": 72, "brgconv_avx512_amx_I8": 1}`` for the int8 copy on an AMX Xeon:
        the check that int8 and bf16 really run on AMX (``jit_`` or ``gemm_`` kernels mean they do not).
        """
        return {**super().info(), "kernels": product_kernels(self.compiled)}

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One inference (the batch split among the streams' requests, run at once); the output is copied out of
        the requests' reused buffers."""
        if self.streams == 1 or len(x) < 2:
            self.request.infer({0: x})
            return self.request.get_output_tensor(0).data.copy()
        parts = [p for p in np.array_split(x, min(self.streams, len(x))) if len(p)]
        requests = self.requests[: len(parts)]
        for request, part in zip(requests, parts, strict=True):
            request.start_async({0: np.ascontiguousarray(part)})
        for request in requests:
            request.wait()
        return np.concatenate([r.get_output_tensor(0).data.copy() for r in requests])

