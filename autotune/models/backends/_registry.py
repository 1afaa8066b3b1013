"""The one table of backends: what each needs, what it does, which class runs it; availability and the factory."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from autotune.errors import ConfigError
from autotune.models.backends._base import Backend, BackendSpec
from autotune.models.backends._exported import OnnxRuntimeBackend, OpenVinoBackend
from autotune.models.backends._fake import FakeBackend, _fake_dim
from autotune.models.backends._torch import TorchBackend, TorchInt8Backend


class BackendBuilder(Protocol):
    """What builds a backend from its spec: each backend class's constructor."""

    def __call__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> Backend:
        """Build the replica's backend; ``cache_root`` overrides the artefact folder."""
        ...


@dataclass(frozen=True)
class BackendEntry:
    """One CPU backend: the packages it imports, whether it needs a C++ compiler, what it does, what runs it."""

    packages: tuple[str, ...]
    needs_compiler: bool
    description: str
    backend_class: BackendBuilder
    #: Bumped when the backend's numerics change (precision settings, quantisation recipe): the accuracy guard's
    #: cached results are keyed by it, so a changed backend is checked again instead of passing on an old result.
    revision: int = 0


# name -> entry, in the order the tuner and the benches list them; "eager" (the fp32 reference) first.
CPU_BACKEND_TABLE: dict[str, BackendEntry] = {
    "eager": BackendEntry((), False, "PyTorch eager fp32 (reference)", TorchBackend),
    "int8": BackendEntry((), False, "PyTorch dynamic int8 quantisation of the linear layers", TorchInt8Backend),
    "bf16": BackendEntry((), True, "bfloat16 weights, torch.compile (inductor, frozen)", TorchBackend),
    "compile": BackendEntry((), True, "fp32 torch.compile (inductor, frozen)", TorchBackend),
    "onnx": BackendEntry(("onnxruntime",), False, "ONNX Runtime fp32", OnnxRuntimeBackend),
    "onnx-int8": BackendEntry(
        ("onnxruntime", "onnx"), False, "ONNX Runtime dynamic int8 (per-channel, MatMul)", OnnxRuntimeBackend
    ),
    "onnx-int8s": BackendEntry(
        ("onnxruntime", "onnx"), False, "ONNX Runtime static int8 (QDQ, calibrated on the database)", OnnxRuntimeBackend
    ),
    "openvino": BackendEntry(("openvino",), False, "OpenVINO fp32", OpenVinoBackend),
    "openvino-bf16": BackendEntry(("openvino",), False, "OpenVINO, bfloat16 inference precision", OpenVinoBackend),
    "openvino-int8": BackendEntry(
        ("openvino", "nncf"), False, "OpenVINO int8 (NNCF, calibrated on the database), bf16 elsewhere",
        OpenVinoBackend, revision=2,  # 1: the non-quantised ops at bf16 (were fp32); 2: symmetric activations
    ),
}
CPU_BACKEND_NAMES: tuple[str, ...] = tuple(CPU_BACKEND_TABLE)
# GPU replicas all run TorchBackend, at the GPU precision; ``cuda-graphs`` replays one captured graph per batch
# size (launch overhead gone: it helps small batches, where the GPU waits on the CPU between kernels).
GPU_BACKENDS: tuple[str, ...] = ("eager", "compile", "channels-last", "cuda-graphs")


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
    entry = CPU_BACKEND_TABLE.get(name)
    if entry is None:
        return f"unknown cpu backend {name!r}; choose one of: {', '.join(CPU_BACKEND_NAMES)}"
    for package in entry.packages:
        if importlib.util.find_spec(package) is None:
            hint = "pip install 'clip-autotune[onnx]'" if package.startswith("onnx") else f"pip install {package}"
            return f"backend {name!r} needs the '{package}' package, which is not installed ({hint})"
    if entry.needs_compiler and _cxx_compiler() is None:
        return f"backend {name!r} needs a C++ compiler for torch.compile (none of $CXX, g++, c++, clang++ found)"
    return None


def available_cpu_backends() -> list[str]:
    """The CPU backends that can run on this machine (packages installed, compiler present), in order.

    Example:
        >>> available_cpu_backends()[:2]
        ['eager', 'int8']
    """
    return [name for name in CPU_BACKEND_NAMES if backend_unavailable(name) is None]


def backend_revision(name: str) -> int:
    """The revision of a CPU backend's numerics (0 for an unknown one or a GPU backend).

    Example:
        >>> backend_revision("eager")
        0
    """
    entry = CPU_BACKEND_TABLE.get(name)
    return entry.revision if entry else 0


def describe_backend(name: str) -> str:
    """One line on what a CPU backend does (the name itself for an unknown one).

    Example:
        >>> describe_backend("onnx")
        'ONNX Runtime fp32'
    """
    entry = CPU_BACKEND_TABLE.get(name)
    return entry.description if entry else name


def build_backend(spec: BackendSpec, *, cache_root: Path | None = None) -> Backend:
    """Top-level builder, called inside the worker process so heavy objects are never pickled.

    ``cache_root`` overrides the artefact folder (benchmarks use a fresh one to time cold builds). Unknown or
    unavailable backends are one-line :class:`ConfigError`s.

    Example:
        >>> build_backend(BackendSpec(model_id="fake:8")).embed_dim
        8
    """
    if spec.is_fake:
        return FakeBackend(_fake_dim(spec.model_id), spec.fake_delay_s)
    device = "cpu" if spec.device == "cpu" else "gpu"
    reason = backend_unavailable(spec.backend, device)
    if reason:
        raise ConfigError(reason)
    if device == "gpu":
        return TorchBackend(spec, cache_root=cache_root)
    return CPU_BACKEND_TABLE[spec.backend].backend_class(spec, cache_root=cache_root)
