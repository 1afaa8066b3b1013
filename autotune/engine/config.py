"""The engine's one typed, validated configuration object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from autotune.errors import ConfigError
from autotune.machine import logical_cores
from autotune.models.backends import CPU_BACKEND_NAMES, GPU_BACKENDS, backend_unavailable
from autotune.models.calibration import calibration_for

if TYPE_CHECKING:
    from autotune.data.sources import ImageSource

Scheduling = Literal["dynamic", "static"]
DecodePlacement = Literal["cpu", "gpu"]
GpuPrecision = Literal["fp16", "bf16", "fp32"]
CpuPrecision = Literal["fp32"]

SCHEDULING: tuple[str, ...] = ("dynamic", "static")
# Where JPEGs are decoded: by the producers on the CPU (the fast path), or in batches inside each replica
# (nvJPEG on a GPU replica; a CPU replica decodes its own batch with the CPU decoder).
DECODE_PLACEMENTS: tuple[str, ...] = ("cpu", "gpu")
# How a torch CPU replica's idle OpenMP threads wait between parallel regions: libgomp's default (spin a while,
# then sleep) or passive (sleep at once, leaving the core to a producer or another replica). ONNX Runtime
# replicas never spin (their session turns spinning off) whatever this says.
OMP_WAITS: tuple[str, ...] = ("default", "passive")
GPU_PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "fp32")
# The backends' registry is the one list of CPU backends; "eager" (first) is the fp32 reference.
CPU_BACKENDS: tuple[str, ...] = CPU_BACKEND_NAMES


def config_calibration(source: ImageSource, model_id: str, config: EngineConfig) -> str | None:
    """The calibration set's file when ``config``'s CPU replicas are quantised statically, else None."""
    return calibration_for(source, model_id, config.cpu_backend) if config.cpu_models else None


def gpu_count() -> int:
    """Number of CUDA devices, without initialising CUDA in this process."""
    try:
        import torch

        # device_count() uses NVML when it can and does not create a CUDA context, so forking stays safe.
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover
        return 0


def safe_default_for(cores: int) -> EngineConfig:
    """A configuration that works on any machine of ``cores`` cores: a quarter producers, one replica on all cores.

    It is trial 0 of the built-in CPU spaces, and what runs where a machine has no profile. The replica takes
    every core, the producers' included: on 2 cores one eager replica of 2 threads beside the producer scans
    1.8x as fast as one of 1 thread (ViT-B/32, 2,000-image retrievals), since the model is the slow stage and
    the producer waits most of the time.

    Example:
        >>> safe_default_for(2).describe()
        '1 producer, 1 cpu x 2 threads (batch 32, eager), dynamic'
    """
    return EngineConfig(producers=max(1, cores // 4), cpu_models=1, cpu_threads=max(1, cores), cpu_batch=32)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How a scan runs: producer processes, model replicas per device, batch sizes and scheduling.

    Producers read and preprocess images into shared-memory slots; each model replica is a consumer
    process. ``cpu_models`` replicas each use ``cpu_threads`` intra-op threads; ``gpu_models`` replicas run
    on each visible GPU. Batch sizes are per device type. ``scheduling`` is ``dynamic`` (one shared
    ready queue, first come first served) or ``static`` (probe each consumer, then split by speed).
    ``gpu_backend`` is how GPU replicas run the tower (``eager``, ``compile``, ``channels-last``,
    ``cuda-graphs``), guarded like the CPU backends; ``decode`` places JPEG decoding on the producers
    (``cpu``) or batched inside the replicas (``gpu``: nvJPEG on GPU replicas).

    Example:
        >>> EngineConfig(producers=2, cpu_models=1, cpu_threads=2, cpu_batch=32).validate(cores=4)
    """

    producers: int = 1
    cpu_models: int = 1
    cpu_threads: int = 1
    gpu_models: int = 0
    cpu_batch: int = 32
    gpu_batch: int = 128
    scheduling: Scheduling = "dynamic"
    queue_depth: int = 2
    cpu_precision: CpuPrecision = "fp32"
    gpu_precision: GpuPrecision = "fp16"
    cpu_backend: str = "eager"
    gpu_backend: str = "eager"
    decode: DecodePlacement = "cpu"
    pin_cores: bool = False
    # Pin only the CPU replicas, each to cores of its own, leaving the producers to float: placeable where
    # producers and replicas together need more cores than the machine has (2 x 1 plus a producer on 2 cores).
    pin_replicas: bool = False
    omp_wait: str = "default"
    # Inference streams inside each OpenVINO CPU replica (OpenVINO's own throughput layout: one process, one
    # copy of the weights, each stream its share of the replica's threads and of each batch).
    cpu_streams: int = 1
    probe_batches: int = 2
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def consumers(self) -> int:
        """Total model replicas (CPU replicas plus GPU replicas on every GPU)."""
        # Counting GPUs imports torch (seconds): a CPU-only configuration never asks.
        return self.cpu_models + (self.gpu_models * max(gpu_count(), 1) if self.gpu_models else 0)

    def unit_batch(self) -> int:
        """Images per shared-memory slot: GPU replicas coalesce several slots when batches differ."""
        sizes = ([self.cpu_batch] if self.cpu_models else []) + ([self.gpu_batch] if self.gpu_models else [])
        return min(sizes) if sizes else self.cpu_batch

    def validate(self, *, cores: int | None = None, gpus: int | None = None) -> EngineConfig:
        """Refuse impossible values with one clear line (ConfigError); return self when fine."""
        cores = logical_cores() if cores is None else cores
        if gpus is None:  # counting GPUs imports torch: seconds a CPU-only trial's process need not spend
            gpus = gpu_count() if self.gpu_models else 0
        ints = {
            "producers": self.producers,
            "cpu_models": self.cpu_models,
            "cpu_threads": self.cpu_threads,
            "gpu_models": self.gpu_models,
            "cpu_batch": self.cpu_batch,
            "gpu_batch": self.gpu_batch,
            "queue_depth": self.queue_depth,
            "probe_batches": self.probe_batches,
            "cpu_streams": self.cpu_streams,
        }
        for key, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{key} must be an integer, got {value!r}")
        if self.producers < 1:
            raise ConfigError(f"producers must be >= 1, got {self.producers}")
        if self.cpu_models < 0 or self.gpu_models < 0:
            raise ConfigError("cpu_models and gpu_models must be >= 0")
        if self.cpu_models + self.gpu_models == 0:
            raise ConfigError("no model replicas: set cpu_models or gpu_models to at least 1")
        if self.cpu_batch < 1 or self.gpu_batch < 1:
            raise ConfigError(f"batch size must be >= 1, got cpu_batch={self.cpu_batch} gpu_batch={self.gpu_batch}")
        if self.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.cpu_models and self.cpu_threads > cores:
            raise ConfigError(f"cpu_threads={self.cpu_threads} is more than the {cores} cores of this machine")
        if self.queue_depth < 1:
            raise ConfigError(f"queue_depth must be >= 1, got {self.queue_depth}")
        if self.gpu_models and gpus == 0:
            raise ConfigError(f"gpu_models={self.gpu_models} but no CUDA GPU is visible")
        if self.scheduling not in SCHEDULING:
            raise ConfigError(f"scheduling must be one of {', '.join(SCHEDULING)}, got {self.scheduling!r}")
        if self.gpu_precision not in GPU_PRECISIONS:
            raise ConfigError(f"gpu_precision must be one of {', '.join(GPU_PRECISIONS)}, got {self.gpu_precision!r}")
        if self.cpu_backend not in CPU_BACKENDS:
            raise ConfigError(f"cpu_backend must be one of {', '.join(CPU_BACKENDS)}, got {self.cpu_backend!r}")
        if self.gpu_backend not in GPU_BACKENDS:
            raise ConfigError(f"gpu_backend must be one of {', '.join(GPU_BACKENDS)}, got {self.gpu_backend!r}")
        if self.omp_wait not in OMP_WAITS:
            raise ConfigError(f"omp_wait must be one of {', '.join(OMP_WAITS)}, got {self.omp_wait!r}")
        if self.decode not in DECODE_PLACEMENTS:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_PLACEMENTS)}, got {self.decode!r}")
        if self.cpu_models:
            reason = backend_unavailable(self.cpu_backend)
            if reason:
                raise ConfigError(f"cpu_backend: {reason}")
        if self.cpu_precision != "fp32":
            raise ConfigError(f"cpu_precision must be fp32 (use cpu_backend for int8), got {self.cpu_precision!r}")
        self._check_streams()
        if self.pin_replicas and (self.pin_cores or self.cpu_models * self.cpu_threads > cores):
            raise ConfigError(
                f"pin_replicas needs cpu_models * cpu_threads <= {cores} cores and pin_cores off, got "
                f"{self.cpu_models} * {self.cpu_threads}" + (" with pin_cores" if self.pin_cores else "")
            )
        if self.pin_cores and self.producers + self.cpu_models * self.cpu_threads > cores:
            raise ConfigError(
                f"pin_cores needs producers + cpu_models * cpu_threads <= {cores} cores, got "
                f"{self.producers} + {self.cpu_models} * {self.cpu_threads}"
            )
        return self

    def _check_streams(self) -> None:
        """Streams split a replica's threads evenly, and only OpenVINO replicas run them."""
        if self.cpu_streams < 1:
            raise ConfigError(f"cpu_streams must be >= 1, got {self.cpu_streams}")
        if self.cpu_streams == 1 or not self.cpu_models:
            return
        if not self.cpu_backend.startswith("openvino"):
            raise ConfigError(f"cpu_streams={self.cpu_streams} needs an OpenVINO backend, not {self.cpu_backend}")
        if self.cpu_threads % self.cpu_streams:
            raise ConfigError(
                f"cpu_streams={self.cpu_streams} must divide cpu_threads={self.cpu_threads} (each stream gets an "
                "equal share of the replica's threads)"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (round-trips through :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        if not data["extra"]:
            data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from a dictionary, refusing unknown keys with one line."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown engine setting(s): {', '.join(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """A short human summary, e.g. ``2 producers, 1 cpu x 2 threads (batch 32), dynamic``."""
        parts = [f"{self.producers} producer{'s' if self.producers != 1 else ''}"]
        if self.cpu_models:
            streams = f" in {self.cpu_streams} streams" if self.cpu_streams > 1 else ""
            parts.append(
                f"{self.cpu_models} cpu x {self.cpu_threads} thread{'s' if self.cpu_threads != 1 else ''}{streams} "
                f"(batch {self.cpu_batch}, {self.cpu_backend})"
            )
        if self.gpu_models:
            backend = "" if self.gpu_backend == "eager" else f", {self.gpu_backend}"
            parts.append(f"{self.gpu_models} gpu/device (batch {self.gpu_batch}, {self.gpu_precision}{backend})")
        if self.decode != "cpu":
            parts.append(f"{self.decode} decode")
        parts.append(self.scheduling)
        if self.pin_cores:
            parts.append("pinned")
        if self.pin_replicas:
            parts.append("replicas pinned")
        if self.omp_wait != "default" and self.cpu_models:
            parts.append(f"{self.omp_wait} OpenMP wait")
        return ", ".join(parts)
