"""The backends' registry: one table the engine config reads, availability checks, the factory's refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from autotune.engine.config import CPU_BACKENDS, EngineConfig
from autotune.errors import ConfigError
from autotune.models import backends as B
from autotune.models.backends import (
    CPU_BACKEND_NAMES,
    CPU_BACKEND_TABLE,
    TORCH_FREE_BACKENDS,
    BackendSpec,
    _registry,
    backend_unavailable,
    build_backend,
)
from autotune.models.backends._exported import _ExportedBackend


def test_unknown_backend_is_one_line() -> None:
    """build_backend and EngineConfig refuse an unknown backend with one line naming the choices."""
    with pytest.raises(ConfigError) as err:
        build_backend(BackendSpec(model_id="synthetic:tiny", backend="tensorrt"))
    assert "\n" not in str(err.value) and "onnx-int8" in str(err.value)
    with pytest.raises(ConfigError) as err:
        EngineConfig(cpu_backend="tensorrt").validate(cores=2, gpus=0)
    assert "\n" not in str(err.value) and "tensorrt" in str(err.value) and "eager" in str(err.value)


def test_missing_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose package is not installed is refused by the config, naming the package."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        EngineConfig(cpu_backend="onnx").validate(cores=2, gpus=0)
    assert "onnxruntime" in str(err.value) and "\n" not in str(err.value)
    assert "onnx" not in B.available_cpu_backends()
    EngineConfig(cpu_backend="int8").validate(cores=2, gpus=0)


def test_missing_compiler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile backends need a C++ compiler."""
    monkeypatch.setattr(_registry, "_cxx_compiler", lambda: None)
    assert "C++ compiler" in str(backend_unavailable("bf16"))
    assert backend_unavailable("int8") is None


def test_backend_lists_agree() -> None:
    """The config's tuple and the backends module list the same CPU backends, eager (the reference) first."""
    assert CPU_BACKENDS == CPU_BACKEND_NAMES and CPU_BACKENDS[0] == "eager"
    for name in CPU_BACKENDS:
        assert B.describe_backend(name)


def test_fake_backend_reports_setup() -> None:
    """The fake backend keeps working, with the new setup fields at their defaults."""
    fake = build_backend(BackendSpec(model_id="fake:16"))
    assert fake.embed(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 16)
    assert fake.info() == {"backend": "eager", "setup_seconds": 0.0, "cache_hit": False, "artefact": None}


def test_cpu_refuses_gpu_precisions(tiny_model: str) -> None:
    """CPU replicas run fp32: half precisions on the CPU go through cpu_backend, not precision."""
    with pytest.raises(ConfigError):
        build_backend(BackendSpec(model_id=tiny_model, precision="fp16"))


def test_torch_free_backends_are_the_exported_ones() -> None:
    """The spec's torch-free list names exactly the registry's ONNX Runtime / OpenVINO entries."""
    exported = tuple(
        name
        for name, entry in CPU_BACKEND_TABLE.items()
        if isinstance(entry.backend_class, type) and issubclass(entry.backend_class, _ExportedBackend)
    )
    assert exported == TORCH_FREE_BACKENDS
    for name, entry in CPU_BACKEND_TABLE.items():
        assert entry.description == B.describe_backend(name)
