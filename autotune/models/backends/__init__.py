"""Inference backends for a scan replica: one small interface, several ways to run the CLIP image tower.

Every backend turns a uint8 NHWC batch into float32 L2-normalised embeddings (:meth:`Backend.embed`), and
reports how long it took to become ready (:attr:`Backend.setup_seconds`) and whether the expensive one-off
artefact it needs (an ONNX export, a quantised model, compiled kernels) came from the on-disk cache
(:attr:`Backend.cache_hit`). CPU backends (``EngineConfig.cpu_backend``; the table is
:data:`CPU_BACKEND_TABLE`):

============== ==================================================================================
eager          PyTorch eager fp32: the reference every other backend is checked against
int8           PyTorch dynamic int8 quantisation of the ``nn.Linear`` layers (qint8 weights)
bf16           bfloat16 weights compiled by ``torch.compile`` (inductor, frozen weights): AMX / AVX512-BF16
compile        fp32 ``torch.compile`` (inductor, frozen weights)
onnx           ONNX Runtime fp32 on an ONNX export with a dynamic batch axis
onnx-int8      ONNX Runtime, dynamic int8 (per-channel qint8 weights, MatMul only) of that export
onnx-int8s     ONNX Runtime, static int8 (QDQ, uint8 activations, int8 weights) calibrated on the database
openvino       OpenVINO fp32 on the same export
openvino-bf16  OpenVINO with a bfloat16 inference precision (AMX / AVX512-BF16; fp32 where the CPU lacks it)
openvino-int8  OpenVINO on an NNCF int8 copy of the export calibrated on the database (VNNI / AMX int8)
============== ==================================================================================

Static int8 backends are calibrated on a set drawn from the database scanned (:mod:`autotune.models.calibration`,
passed as ``BackendSpec.calibration``): its digest keys their artefact and the embedding index.

GPU replicas run :class:`TorchBackend` at the GPU precision, as ``eager``, ``compile`` or ``channels-last``.

Every backend reads the model's facts (embedding width, preprocessing, tower shape) from a cached sidecar
(:func:`autotune.models.facts.model_facts`): a worker whose artefact is cached never imports transformers, and
an ONNX Runtime or OpenVINO worker never imports torch either.

Modules: ``_base`` (spec, interface), ``_cache`` (artefact keys, build-once under a file lock), ``_torch``,
``_exported`` (ONNX Runtime, OpenVINO), ``_fake`` (the test stand-in), ``_registry`` (the table, the factory).

Example:
    >>> from autotune.models.backends import BackendSpec, build_backend
    >>> build_backend(BackendSpec(model_id="fake:8")).embed(np.zeros((1, 16, 16, 3), np.uint8)).shape
    (1, 8)
"""

from __future__ import annotations

from autotune.models.backends._base import (
    FAKE_PREFIX,
    REFERENCE_BACKEND,
    TORCH_FREE_BACKENDS,
    Backend,
    BackendSpec,
)
from autotune.models.backends._cache import (
    ARTEFACT_FORMAT,
    BUILD_WAIT_S,
    LOCKS_DIR,
    artefact_key,
    artefact_path,
    backends_cache,
    library_versions,
    lock_path,
    materialise,
)
from autotune.models.backends._exported import ONNX_OPSET, OnnxRuntimeBackend, OpenVinoBackend, product_kernels
from autotune.models.backends._fake import FakeBackend, fake_text_embeddings
from autotune.models.backends._fake import _fake_dim as _fake_dim  # for the engine runner: a fake model's width
from autotune.models.backends._registry import (
    CPU_BACKEND_NAMES,
    CPU_BACKEND_TABLE,
    GPU_BACKENDS,
    BackendBuilder,
    BackendEntry,
    available_cpu_backends,
    backend_revision,
    backend_unavailable,
    build_backend,
    describe_backend,
)
from autotune.models.backends._torch import INT8_LAYOUT, TOWER_FORMAT, TorchBackend, TorchInt8Backend

__all__ = [
    "ARTEFACT_FORMAT",
    "BUILD_WAIT_S",
    "CPU_BACKEND_NAMES",
    "CPU_BACKEND_TABLE",
    "FAKE_PREFIX",
    "GPU_BACKENDS",
    "INT8_LAYOUT",
    "LOCKS_DIR",
    "ONNX_OPSET",
    "REFERENCE_BACKEND",
    "TORCH_FREE_BACKENDS",
    "TOWER_FORMAT",
    "Backend",
    "BackendBuilder",
    "BackendEntry",
    "BackendSpec",
    "FakeBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "TorchInt8Backend",
    "artefact_key",
    "artefact_path",
    "available_cpu_backends",
    "backend_revision",
    "backend_unavailable",
    "backends_cache",
    "build_backend",
    "describe_backend",
    "fake_text_embeddings",
    "library_versions",
    "lock_path",
    "materialise",
    "product_kernels",
]
