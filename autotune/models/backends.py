"""Inference backends for a scan replica: one small interface, several ways to run the CLIP image tower.

Every backend turns a uint8 NHWC batch into float32 L2-normalised embeddings (:meth:`Backend.embed`), and
reports how long it took to become ready (:attr:`Backend.setup_seconds`) and whether the expensive one-off
artefact it needs (an ONNX export, a quantised model, compiled kernels) came from the on-disk cache
(:attr:`Backend.cache_hit`). CPU backends (``EngineConfig.cpu_backend``):

========== ==================================================================================
eager      PyTorch eager fp32: the reference every other backend is checked against
int8       PyTorch dynamic int8 quantisation of the ``nn.Linear`` layers (qint8 weights)
bf16       bfloat16 weights compiled by ``torch.compile`` (inductor, frozen weights): AMX / AVX512-BF16
compile    fp32 ``torch.compile`` (inductor, frozen weights)
onnx       ONNX Runtime fp32 on an ONNX export with a dynamic batch axis
onnx-int8  ONNX Runtime, dynamic int8 (per-channel qint8 weights, MatMul only) of that export
openvino   OpenVINO fp32 on the same export
openvino-bf16  OpenVINO with a bfloat16 inference precision (AMX / AVX512-BF16; fp32 where the CPU lacks it)
========== ==================================================================================

GPU replicas run :class:`TorchBackend` at the GPU precision, as ``eager``, ``compile`` or ``channels-last``.

Torch backends run :class:`autotune.models.tower.ClipImageTower`, CLIP's image tower loaded straight from
the checkpoint, and every backend reads the model's facts (embedding width, preprocessing, tower shape) from
a cached sidecar (:func:`autotune.models.facts.model_facts`): a worker whose artefact is cached never imports
transformers, and an ONNX Runtime or OpenVINO worker never imports torch either.

Artefacts live under ``cache_dir("backends")`` in files named by a key of the model's ``weights_hash``, the
backend and the versions of the libraries that produce them. The ONNX export has a dynamic batch axis, so the
batch size is not part of its key; compiled torch kernels are specialised to one batch size (smaller batches
are zero-padded up to it) and live in inductor's own cache, pointed at ``cache_dir("backends", "inductor")``.
Files are written through :func:`autotune.atomic.atomic_path` (temporary name, fsync, rename). One process
builds an artefact while the others wait on a :class:`filelock.FileLock` (in ``.locks/`` beside the artefacts;
the kernel releases it if the builder dies) and then load what it built. No artefact is unpickled: the int8
model is cached as a state dict of tensors and read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from autotune.atomic import DiskFullError, atomic_path, atomic_write_json
from autotune.errors import ConfigError

# model_facts moved to autotune.models.facts; the guard and the benches still import it from here.
from autotune.models.facts import ModelFacts, model_facts

FAKE_PREFIX = "fake:"
REFERENCE_BACKEND = "eager"
# Bump when an artefact's content changes for the same inputs (export options, quantisation settings...).
ARTEFACT_FORMAT = "1"
ONNX_OPSET = 17
# A consumer that finds another process building an artefact waits this long before building its own copy.
BUILD_WAIT_S = 900.0
# Build locks live here, under the artefact folder: lock files stay after release (deleting one while another
# process waits on it would let two builders in), and a folder of their own keeps them out of artefact listings.
LOCKS_DIR = ".locks"
# The int8 artefact's layout; part of its key, so caches of the old layout (a whole pickled module) are never read.
INT8_LAYOUT = "state-dict"
# The torch module the int8 state and the compiled kernels come from (autotune.models.tower); part of their
# keys, so artefacts made from transformers' modules are never taken for the tower's.
TOWER_FORMAT = "autotune-tower-1"
# Backends whose replica runs no torch (ONNX Runtime, OpenVINO): their workers skip importing it.
TORCH_FREE_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-bf16")

# backend -> (Python packages it imports, whether it needs a C++ compiler, one-line description)
_CPU_BACKENDS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "eager": ((), False, "PyTorch eager fp32 (reference)"),
    "int8": ((), False, "PyTorch dynamic int8 quantisation of the linear layers"),
    "bf16": ((), True, "bfloat16 weights, torch.compile (inductor, frozen)"),
    "compile": ((), True, "fp32 torch.compile (inductor, frozen)"),
    "onnx": (("onnxruntime",), False, "ONNX Runtime fp32"),
    "onnx-int8": (("onnxruntime", "onnx"), False, "ONNX Runtime dynamic int8 (per-channel, MatMul)"),
    "openvino": (("openvino",), False, "OpenVINO fp32"),
    "openvino-bf16": (("openvino",), False, "OpenVINO, bfloat16 inference precision"),
}
CPU_BACKEND_NAMES: tuple[str, ...] = tuple(_CPU_BACKENDS)
GPU_BACKENDS: tuple[str, ...] = ("eager", "compile", "channels-last")
# Where the user pointed inductor's cache before we touched it (then we leave it there).
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """What a replica runs: the model id, device, precision and backend kind; cheap to pickle.

    ``model_id`` starting with ``fake:`` selects :class:`FakeBackend` (``fake:64`` gives 64-dim
    embeddings); ``fake_delay_s`` adds a per-image sleep so scheduling tests can mimic slow replicas.
    ``batch`` is the replica's batch size: compiled backends build their kernels for it during setup
    (without it, on the first batch, and that compile time still counts as setup). ``threads``: the
    replica's intra-op thread count for ONNX Runtime and OpenVINO (default: torch's current count).
    """

    model_id: str
    device: str = "cpu"
    precision: str = "fp32"
    backend: str = "eager"
    fake_delay_s: float = 0.0
    batch: int | None = None
    threads: int | None = None

    @property
    def is_fake(self) -> bool:
        """True for the deterministic test backend."""
        return self.model_id.startswith(FAKE_PREFIX)

    @property
    def needs_torch(self) -> bool:
        """Whether the replica runs torch (its worker must set torch's threads); ONNX/OpenVINO ones do not."""
        return not self.is_fake and not (self.device == "cpu" and self.backend in TORCH_FREE_BACKENDS)


class Backend(ABC):
    """Turns a batch of preprocessed uint8 images (N, H, W, 3) into L2-normalised float32 embeddings.

    ``setup_seconds``: time this process spent getting ready (loading, exporting, quantising, compiling,
    waiting for another process's build); ``cache_hit``: whether the one-off artefact was found on disk rather
    than built here; ``artefact``: its path, if it has one.
    """

    embed_dim: int
    device: str = "cpu"
    name: str = REFERENCE_BACKEND
    setup_seconds: float = 0.0
    cache_hit: bool = False
    artefact: str | None = None

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed one batch; returns float32 (N, embed_dim), rows of unit norm."""

    def timings(self) -> dict[str, float]:
        """Seconds spent per stage since the last call (transfer, forward), then reset."""
        return {}

    def info(self) -> dict[str, Any]:
        """Setup figures for telemetry: backend, setup seconds, cache hit, artefact path."""
        return {
            "backend": self.name,
            "setup_seconds": round(self.setup_seconds, 3),
            "cache_hit": self.cache_hit,
            "artefact": self.artefact,
        }


def _fake_dim(model_id: str) -> int:
    """Embedding size encoded in a ``fake:<dim>`` id (default 64)."""
    tail = model_id[len(FAKE_PREFIX) :]
    try:
        return int(tail) if tail else 64
    except ValueError as exc:
        raise ConfigError(f"bad fake model id {model_id!r}: use fake:<dim>, e.g. fake:64") from exc


class FakeBackend(Backend):
    """Deterministic, fast stand-in: mean-pools 8x8 patches of colour and projects them randomly.

    Its embeddings depend on the pixels, so exactness tests (top-k against brute force, ids aligned with
    embeddings) are meaningful without loading a network.
    """

    def __init__(self, dim: int = 64, delay_s: float = 0.0) -> None:
        self.embed_dim = dim
        self.delay_s = delay_s
        rng = np.random.default_rng(1234)
        self._proj = rng.standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self._forward_s = 0.0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pool to 8x8x3, centre, project, normalise."""
        start = time.perf_counter()
        n, h, w, c = batch.shape
        pooled = batch[:, : h - h % 8, : w - w % 8].reshape(n, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4))
        feats = pooled.reshape(n, -1).astype(np.float32) / 255.0 - 0.5
        emb = feats @ self._proj
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        if self.delay_s:
            time.sleep(self.delay_s * n)
        self._forward_s += time.perf_counter() - start
        return emb.astype(np.float32)

    def timings(self) -> dict[str, float]:
        """Forward seconds since the last call."""
        out, self._forward_s = {"forward": self._forward_s}, 0.0
        return out


def fake_text_embeddings(texts: list[str], dim: int) -> np.ndarray:
    """Deterministic unit vectors for query texts under the fake backend (hash-seeded)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        rows.append(vec / np.linalg.norm(vec))
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)


# ------------------------------------------------------------------------------------------ availability


def _cxx_compiler() -> str | None:
    """The C++ compiler inductor would use ($CXX, else g++, c++ or clang++), or None."""
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        found = shutil.which(name)
        if found:
            return found
    return None


def backend_unavailable(name: str, device: str = "cpu") -> str | None:
    """None when backend ``name`` can run here, else one line saying why not (unknown, package missing...).

    Cheap: looks packages up without importing them.

    Example:
        >>> backend_unavailable("eager") is None
        True
        >>> backend_unavailable("tensorrt").startswith("unknown cpu backend 'tensorrt'; choose one of: eager")
        True
    """
    if device != "cpu":
        if name not in GPU_BACKENDS:
            return f"unknown gpu backend {name!r}; choose one of: {', '.join(GPU_BACKENDS)}"
        return None
    if name not in _CPU_BACKENDS:
        return f"unknown cpu backend {name!r}; choose one of: {', '.join(CPU_BACKEND_NAMES)}"
    packages, compiler, _ = _CPU_BACKENDS[name]
    for package in packages:
        if importlib.util.find_spec(package) is None:
            hint = "pip install 'clip-autotune[onnx]'" if package.startswith("onnx") else f"pip install {package}"
            return f"backend {name!r} needs the '{package}' package, which is not installed ({hint})"
    if compiler and _cxx_compiler() is None:
        return f"backend {name!r} needs a C++ compiler for torch.compile (none of $CXX, g++, c++, clang++ found)"
    return None


def available_cpu_backends() -> list[str]:
    """The CPU backends that can run on this machine (packages installed, compiler present), in order.

    Example:
        >>> available_cpu_backends()[:2]
        ['eager', 'int8']
    """
    return [name for name in CPU_BACKEND_NAMES if backend_unavailable(name) is None]


def describe_backend(name: str) -> str:
    """One line on what a CPU backend does."""
    return _CPU_BACKENDS[name][2] if name in _CPU_BACKENDS else name


# ------------------------------------------------------------------------------------------ artefact cache


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    from importlib import metadata

    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


# The libraries whose versions change each artefact (and so are part of its key).
# The ONNX export is still made from transformers' CLIPModel; the int8 state and compiled kernels come from
# autotune's own tower (TOWER_FORMAT in their keys), which transformers does not touch.
_ARTEFACT_LIBS: dict[str, tuple[str, ...]] = {
    "onnx": ("torch", "transformers"),
    "onnx-int8": ("torch", "transformers", "onnx", "onnxruntime"),
    "int8": ("torch",),
    "compile": ("torch",),
    "openvino": ("openvino",),
}


def artefact_key(weights_hash: str, artefact: str, **extra: Any) -> str:
    """16 hex chars naming one artefact: weights, artefact kind, library versions, format, ``extra`` options.

    ``extra`` carries what else shapes it (e.g. ``batch`` for compiled kernels); the ONNX export has a dynamic
    batch axis, so its key has no batch size.

    Example:
        >>> artefact_key("0123456789abcdef", "onnx") == artefact_key("0123456789abcdef", "onnx")
        True
        >>> artefact_key("0123456789abcdef", "onnx") != artefact_key("fedcba9876543210", "onnx")
        True
    """
    record = {
        "weights_hash": weights_hash,
        "artefact": artefact,
        "format": ARTEFACT_FORMAT,
        "versions": library_versions(*_ARTEFACT_LIBS.get(artefact, ("torch",))),
        "extra": {k: extra[k] for k in sorted(extra)},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def artefact_path(root: Path, weights_hash: str, artefact: str, suffix: str, **extra: Any) -> Path:
    """``<root>/<artefact>-<weights_hash>-<key><suffix>``: where an artefact lives in the cache."""
    return root / f"{artefact}-{weights_hash}-{artefact_key(weights_hash, artefact, **extra)}{suffix}"


def lock_path(path: Path) -> Path:
    """The build lock of the artefact at ``path``: ``<folder>/.locks/<name>.lock``."""
    return path.parent / LOCKS_DIR / f"{path.name}.lock"


def materialise(
    path: Path, build: Callable[[Path], object], *, wait_s: float = BUILD_WAIT_S, poll_s: float = 0.05
) -> tuple[bool, float]:
    """Make sure the artefact at ``path`` exists; return ``(cache_hit, seconds_waited)``.

    ``build(tmp)`` writes the artefact to a temporary path next to ``path``, which is then fsynced and renamed
    into place (readers see no file or a whole file). One process builds while the others wait on its file
    lock, then find the artefact and build nothing (a hit). A builder that dies releases the lock with its
    process. A waiter that has waited ``wait_s`` (a build hung, or far slower than any seen) logs a warning and
    builds its own copy without the lock: both renames carry the same content, so whichever lands last is fine.
    """
    if path.exists():
        return True, 0.0
    # Imported here, past the cache-hit return: a replica whose artefact is there never pays for it (0.1 s).
    from filelock import FileLock, Timeout

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(lock))
    start = time.monotonic()
    try:
        file_lock.acquire(timeout=wait_s, poll_interval=poll_s)
        held = True
    except Timeout:
        log.warning("building %s after waiting %.0f s for another process to build it", path.name, wait_s)
        held = False
    waited = time.monotonic() - start
    try:
        if path.exists():  # built by the process we waited for
            return True, waited
        with atomic_path(path) as tmp:
            build(tmp)
        return False, waited
    finally:
        if held:
            file_lock.release()


def backends_cache(root: Path | None = None) -> Path:
    """The artefact folder: ``root`` if given (created), else ``cache_dir("backends")``."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        return root
    from autotune.cache import cache_dir

    return cache_dir("backends")


# ------------------------------------------------------------------------------------------ shared helpers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter/quantiser chatter (deprecation notes, 'consider pre-processing' hints)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _quantised_linears(module: Any) -> None:
    """Swap every plain ``nn.Linear`` under ``module`` for a placeholder dynamic qint8 ``Linear``, in place.

    These are the modules ``quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)`` puts there (it matches the
    exact type, as here); the cached state brings their packed weights. Running ``quantize_dynamic`` on the
    skeleton would quantise weights about to be replaced (4.3 s on ViT-B/32), and even an empty full-size
    quantised Linear packs its zero weight (0.8 s in all): a 1x1 one packs nothing worth timing, and keeps the
    real sizes only for its repr. A state that does not fit fails the strict load (names) or the first
    forward (shapes), never silently.
    """
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for name, child in module.named_children():
        if type(child) is torch.nn.Linear:
            quantised = DynamicLinear(1, 1, bias_=child.bias is not None, dtype=torch.qint8)
            quantised.in_features, quantised.out_features = child.in_features, child.out_features
            setattr(module, name, quantised)
        else:
            _quantised_linears(child)


def _int8_skeleton(facts: ModelFacts) -> Any:
    """The int8 backend's module: the model's tower, quantised Linear placeholders, other weights on meta.

    Nothing is allocated or initialised for the fp32 weights: the cached state brings every tensor, and a
    strict ``load_state_dict(..., assign=True)`` puts each one in place (a state that leaves a tensor out
    fails the load instead of leaving it on the meta device).
    """
    from autotune.models.tower import empty_tower

    tower = empty_tower(facts)
    with _quiet():
        _quantised_linears(tower)
    return tower


def _padded_call(fn: Callable[[Any], Any], x: Any, size: int) -> Any:
    """Run ``fn`` (compiled for batches of exactly ``size``) on any batch: chunks, last one zero-padded."""
    import torch

    n = int(x.shape[0])
    if n == size:
        return fn(x)
    outs = []
    for start in range(0, n, size):
        chunk = x[start : start + size]
        k = int(chunk.shape[0])
        if k < size:
            pad = chunk.new_zeros((size - k, *chunk.shape[1:]))
            chunk = torch.cat([chunk, pad]).contiguous(memory_format=torch.channels_last)
        outs.append(fn(chunk)[:k])
    return torch.cat(outs)


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


class _Timed:
    """Transfer/forward stopwatch shared by the backends."""

    def __init__(self) -> None:
        self._times = {"transfer": 0.0, "forward": 0.0}

    def timings(self) -> dict[str, float]:
        """Transfer and forward seconds since the last call."""
        out = dict(self._times)
        self._times = {"transfer": 0.0, "forward": 0.0}
        return out


# ------------------------------------------------------------------------------------------ torch backends


class TorchBackend(_Timed, Backend):
    """The CLIP image tower in PyTorch, on CPU or one CUDA device (fp16/bf16/fp32 on GPUs).

    ``spec.backend``: ``eager``; ``compile`` (``torch.compile``, inductor, frozen weights; kernels built for
    ``spec.batch`` images, smaller batches zero-padded); ``channels-last`` (GPU: conv weights and input in
    NHWC memory); on CPU also ``bf16`` (bfloat16 weights, compiled). On a GPU the batch goes through a reused
    pinned host buffer and a non-blocking copy; normalisation runs on the device as one fused op on the
    uint8 tensor. The tower is autotune's own (:mod:`autotune.models.tower`), read from the checkpoint.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        import torch

        from autotune.models.tower import load_tower

        start = time.perf_counter()
        super().__init__()
        self.torch = torch
        self.device = spec.device
        self.name = spec.backend
        on_cpu = spec.device == "cpu"
        precision = "bf16" if (on_cpu and spec.backend == "bf16") else spec.precision
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if on_cpu and spec.precision != "fp32":
            raise ConfigError(f"precision {spec.precision} is for GPUs; CPU replicas run fp32 (see cpu_backend)")
        facts = model_facts(spec.model_id)
        self.preprocess_spec = facts.preprocess
        self.embed_dim = facts.embed_dim
        self.weights_hash = facts.weights_hash
        self.dtype = dtype
        self.tower = load_tower(facts, device=spec.device, dtype=dtype)
        self.channels_last = spec.backend == "channels-last" and not on_cpu
        if self.channels_last:
            self.tower = cast(Any, self.tower).to(memory_format=torch.channels_last)
        self._pinned: Any = None
        self._fn: Callable[[Any], Any] = self.tower
        self._compiled_size: int | None = None
        self._cache_root = cache_root
        self._compile = spec.backend in ("compile", "bf16")
        if self._compile:
            self._fn = self._compiled()
            if spec.batch:
                self._warm(int(spec.batch))
        self.setup_seconds = time.perf_counter() - start

    def _compiled(self) -> Callable[[Any], Any]:
        """``torch.compile`` the tower with frozen weights; inductor's cache lives under the backends cache."""
        torch = self.torch
        import torch._inductor.config as inductor_config

        if _USER_INDUCTOR_DIR is None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(backends_cache(self._cache_root) / "inductor")
        inductor_config.freezing = True  # constant-fold the weights: prepacked oneDNN/AMX matmuls on CPU
        return torch.compile(self.tower, dynamic=False)

    def _warm(self, size: int) -> None:
        """Build the compiled kernels for batches of ``size`` (a marker file records that they are cached)."""
        torch = self.torch
        side = self.preprocess_spec.crop
        marker = artefact_path(
            backends_cache(self._cache_root),
            self.weights_hash,
            "compile",
            ".done",
            device=self.device.split(":")[0],
            dtype=str(self.dtype),
            batch=size,
            channels_last=self.channels_last,
            tower=TOWER_FORMAT,
        )
        self.cache_hit = marker.exists()
        dummy = torch.zeros(size, side, side, 3, dtype=torch.uint8)
        with torch.inference_mode():
            self._forward(self._to_device(dummy.numpy()))
        self._compiled_size = size
        if not self.cache_hit:
            # Only a hint for the next setup's cache_hit flag: a cache that cannot take it is no reason to fail.
            with contextlib.suppress(OSError, DiskFullError):
                atomic_write_json(marker, {"pid": os.getpid(), "time": time.time()})
        self.artefact = str(marker)

    def _to_device(self, batch: np.ndarray) -> Any:
        """Host uint8 batch -> device tensor, via a reused pinned buffer on CUDA."""
        torch = self.torch
        host = torch.from_numpy(batch)
        if self.device == "cpu":
            return host
        if self._pinned is None or self._pinned.shape[0] < host.shape[0] or self._pinned.shape[1:] != host.shape[1:]:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
        staging = self._pinned[: host.shape[0]]
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def _forward(self, pixels: Any) -> Any:
        """Normalise a device uint8 batch and run the (possibly compiled) tower."""
        from autotune.preprocess import normalize

        x = normalize(pixels, self.preprocess_spec, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        if self._compiled_size is not None:
            return _padded_call(self._fn, x, self._compiled_size)
        return self._fn(x)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalise on the device, run the tower, return float32 numpy."""
        from autotune.preprocess import normalize

        torch = self.torch
        if self._compile and self._compiled_size is None:
            # No batch size was given: compile for this one, and count the compile as setup, not forward.
            t = time.perf_counter()
            self._warm(int(batch.shape[0]))
            self.setup_seconds += time.perf_counter() - t
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = self._to_device(batch)
            if self._compiled_size is None:
                x = normalize(x, self.preprocess_spec, dtype=self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                t1 = time.perf_counter()
                emb = self._fn(x).float()
            else:
                t1 = time.perf_counter()
                emb = self._forward(x).float()
            out = emb.cpu().numpy()  # synchronises the device, so forward time is honest
        t2 = time.perf_counter()
        self._times["transfer"] += t1 - t0
        self._times["forward"] += t2 - t1
        return out


class TorchInt8Backend(_Timed, Backend):
    """PyTorch dynamic int8 quantisation (``quantize_dynamic`` on every ``nn.Linear``, qint8), CPU only.

    The quantised vision model and projection are cached as their state dict (tensors, quantised tensors and
    plain containers, nothing else) and read back with ``torch.load(..., weights_only=True)``, so a tampered
    cache file cannot run code. Setup rebuilds the quantised structure from the model's facts alone
    (:func:`_int8_skeleton`: no fp32 weight initialised or loaded) and loads the cached state into it; a cold
    setup quantises the fp32 tower (:mod:`autotune.models.tower`) first and writes that state. The quantised
    layers are the ones ``quantize_dynamic`` makes of transformers' CLIP (same Linear layers, same weights).
    """

    name = "int8"

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        import torch

        start = time.perf_counter()
        super().__init__()
        self.torch = torch
        facts = model_facts(spec.model_id)
        self.preprocess_spec = facts.preprocess
        self.embed_dim = facts.embed_dim
        path = artefact_path(
            backends_cache(cache_root), facts.weights_hash, "int8", ".pt", layout=INT8_LAYOUT, tower=TOWER_FORMAT
        )

        def build(tmp: Path) -> None:
            """Quantise the fp32 image tower's Linear layers; save its state dict (tensors only) to ``tmp``."""
            from autotune.models.tower import load_tower

            with _quiet():
                quantised = torch.ao.quantization.quantize_dynamic(
                    load_tower(facts), {torch.nn.Linear}, dtype=torch.qint8
                )
            torch.save(quantised.state_dict(), tmp)

        self.cache_hit, self.wait_seconds = materialise(path, build)
        # Loaded from disk even right after a build: every setup runs the one path a cache hit takes.
        tower = _int8_skeleton(facts)
        with _quiet():
            # mmap: the packed copies are made by load_state_dict's prepacking anyway, so reading the file into
            # memory first would only add a copy (0.1-0.2 s on ViT-B/32).
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            # strict: every cached tensor finds its module, and no layer is left fp32 or on the meta device.
            tower.load_state_dict(state, strict=True, assign=True)
        self.tower = tower.eval().requires_grad_(False)
        self.artefact = str(path)
        self.setup_seconds = time.perf_counter() - start

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalise, run the quantised tower, return float32 numpy."""
        from autotune.preprocess import normalize

        torch = self.torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = normalize(torch.from_numpy(batch), self.preprocess_spec)
            t1 = time.perf_counter()
            out = self.tower(x).numpy()
        self._times["transfer"] += t1 - t0
        self._times["forward"] += time.perf_counter() - t1
        return out


# ------------------------------------------------------------------------------------------ exported backends


class _ExportedBackend(_Timed, Backend):
    """Shared setup of the ONNX Runtime and OpenVINO backends: the cached ONNX export (and its int8 copy).

    A cache hit runs no torch at all (normalisation is numpy), so a replica's worker never imports it.
    """

    def _prepare(self, spec: BackendSpec, cache_root: Path | None, *, int8: bool) -> Path:
        """Materialise the export the backend runs; sets normalisation, size, cache_hit; returns its path."""
        self.name = spec.backend
        facts = model_facts(spec.model_id)
        self.facts = facts
        self._rows: tuple[int, np.ndarray, np.ndarray] | None = None
        self.embed_dim = facts.embed_dim
        root = backends_cache(cache_root)
        fp32 = artefact_path(root, facts.weights_hash, "onnx", ".onnx", opset=ONNX_OPSET)
        hit, waited = materialise(fp32, lambda tmp: _export_onnx(spec.model_id, tmp))
        path = fp32
        if int8:
            path = artefact_path(root, facts.weights_hash, "onnx-int8", ".onnx", opset=ONNX_OPSET, scheme="pc-matmul")
            hit8, waited8 = materialise(path, lambda tmp: _quantise_onnx(fp32, tmp))
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
    """ONNX Runtime (CPU execution provider) on the cached export: fp32 (``onnx``) or int8 (``onnx-int8``).

    Intra-op threads follow the consumer's thread count; spinning is off so idle workers leave the cores to
    the producers the engine runs beside them.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        import onnxruntime as ort

        start = time.perf_counter()
        super().__init__()
        path = self._prepare(spec, cache_root, int8=spec.backend == "onnx-int8")
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
        return self.session.run(None, {self.input_name: x})[0]


def _cpu_signature() -> str:
    """12 hex characters naming this CPU's model and instruction sets (compiled blobs are kept per CPU kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        import platform

        text = f"{platform.machine()} {platform.processor()}"
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    summary = "\n".join(dict.fromkeys(lines)) or text  # each distinct line once (one per core otherwise)
    return hashlib.sha256(summary.encode()).hexdigest()[:12]


class OpenVinoBackend(_ExportedBackend):
    """OpenVINO (CPU plugin) on the cached fp32 export, with an fp32 or bf16 inference precision.

    ``openvino-bf16`` asks for bfloat16 execution, which the CPU plugin runs on AMX / AVX512-BF16 and quietly
    replaces by fp32 on CPUs without them. One stream, latency mode, the consumer's thread count.

    The compiled model is cached too, through OpenVINO's own model cache (``CACHE_DIR``): importing it takes
    0.3 s where compiling the ViT-B/32 export takes 1.6 s. Its folder is named by a key of the export, the
    compile settings, the OpenVINO version and the CPU; the first compile runs under a build lock (one
    writer per blob) and a ``.done`` marker tells later setups (``cache_hit``) that the blob is there.
    OpenVINO checks a blob on import and recompiles one it cannot read.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        import openvino as ov

        start = time.perf_counter()
        super().__init__()
        path = self._prepare(spec, cache_root, int8=False)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if spec.backend == "openvino-bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        root = backends_cache(cache_root)
        settings = {key.lower(): value for key, value in config.items()}
        marker = artefact_path(
            root, self.facts.weights_hash, "openvino", ".done", source=path.name, cpu=_cpu_signature(), **settings
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
        self.setup_seconds = time.perf_counter() - start

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


# ------------------------------------------------------------------------------------------ factory


def build_backend(spec: BackendSpec, *, cache_root: Path | None = None) -> Backend:
    """Top-level builder, called inside the worker process so heavy objects are never pickled.

    ``cache_root`` overrides the artefact folder (benchmarks use a fresh one to time cold builds). Unknown or
    unavailable backends are one-line :class:`ConfigError`s.
    """
    if spec.is_fake:
        return FakeBackend(_fake_dim(spec.model_id), spec.fake_delay_s)
    device = "cpu" if spec.device == "cpu" else "gpu"
    reason = backend_unavailable(spec.backend, device)
    if reason:
        raise ConfigError(reason)
    if device == "gpu":
        return TorchBackend(spec, cache_root=cache_root)
    if spec.backend in ("eager", "compile", "bf16"):
        return TorchBackend(spec, cache_root=cache_root)
    if spec.backend == "int8":
        return TorchInt8Backend(spec, cache_root=cache_root)
    if spec.backend in ("onnx", "onnx-int8"):
        return OnnxRuntimeBackend(spec, cache_root=cache_root)
    return OpenVinoBackend(spec, cache_root=cache_root)
