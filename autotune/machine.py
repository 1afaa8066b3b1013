"""Hardware fingerprint: what this machine is, as a readable and stable machine id."""

from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device."""

    name: str
    memory_gb: float


@dataclass(frozen=True)
class MachineInfo:
    """The facts that decide how fast a scan can go, and the id profiles are keyed on.

    Example:
        >>> info = detect_machine()
        >>> info.machine_id
        'intel-xeon-processor-2c-24g-cpu-1a2b3c'
    """

    cpu_model: str
    physical_cores: int
    logical_cores: int
    memory_gb: float
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)
    torch_version: str = ""
    cuda_version: str | None = None
    cpu_flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpu_count(self) -> int:
        """Number of CUDA devices."""
        return len(self.gpus)

    @property
    def machine_id(self) -> str:
        """Readable, stable id: CPU, cores, memory and GPUs, plus a short hash of every fact that counts.

        Library versions are left out on purpose: upgrading torch should not orphan a machine's profile
        (the profile records versions and warns when they differ).
        """
        cpu = re.sub(r"\(r\)|\(tm\)|cpu|@.*$", "", self.cpu_model.lower())
        cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")[:32] or "cpu"
        gpu = (
            "cpu" if not self.gpus else f"{len(self.gpus)}x{re.sub(r'[^a-z0-9]+', '', self.gpus[0].name.lower())[:16]}"
        )
        facts = f"{self.cpu_model}|{self.physical_cores}|{self.logical_cores}|{round(self.memory_gb)}|"
        facts += "|".join(f"{g.name}:{round(g.memory_gb)}" for g in self.gpus)
        digest = hashlib.sha256(facts.encode()).hexdigest()[:6]
        return f"{cpu}-{self.logical_cores}c-{round(self.memory_gb)}g-{gpu}-{digest}"

    def summary(self) -> str:
        """One line for notes and headers."""
        gpus = ", ".join(f"{g.name} ({g.memory_gb:.0f} GB)" for g in self.gpus) or "no GPU"
        return (
            f"{self.cpu_model}, {self.physical_cores} physical / {self.logical_cores} logical cores, "
            f"{self.memory_gb:.0f} GB RAM, {gpus}; torch {self.torch_version}"
            + (f", CUDA {self.cuda_version}" if self.cuda_version else "")
        )

    def facts(self) -> dict[str, Any]:
        """Numbers a search space's expressions may use (``cores``, ``gpus``...)."""
        return {
            "cores": self.logical_cores,
            "logical_cores": self.logical_cores,
            "physical_cores": self.physical_cores,
            "memory_gb": self.memory_gb,
            "gpus": self.gpu_count,
            "gpu_memory_gb": min((g.memory_gb for g in self.gpus), default=0.0),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the id."""
        data = asdict(self)
        data["machine_id"] = self.machine_id
        data["gpu_count"] = self.gpu_count
        return data


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or platform."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")


def cpu_flags(keep: tuple[str, ...] = _SPEED_FLAGS) -> tuple[str, ...]:
    """Which of the CPU flags in ``keep`` this machine has, in ``keep``'s order (default: the vector extensions
    that matter for inference speed); empty where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(f for f in keep if f in flags)
    except OSError:
        pass
    return ()


def logical_cores() -> int:
    """Cores this process may run on (affinity-aware, unlike os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def detect_machine() -> MachineInfo:
    """Probe this machine (CPU, cores, memory, GPUs, torch/CUDA versions)."""
    import psutil

    gpus: list[GpuInfo] = []
    torch_version = _torch_version_without_import()
    cuda_version = None
    if torch_version is None:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append(GpuInfo(props.name, round(props.total_memory / 2**30, 1)))
            cuda_version = torch.version.cuda if gpus else None
    return MachineInfo(
        cpu_model=_cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or logical_cores(),
        logical_cores=logical_cores(),
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        gpus=tuple(gpus),
        torch_version=torch_version,
        cuda_version=cuda_version,
        cpu_flags=cpu_flags(),
    )


# Where a GPU driver shows itself (NVIDIA, ROCm, WSL's GPU bridge): without any, torch would find no GPU.
_GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def _torch_version_without_import() -> str | None:
    """torch's version from its package metadata when this machine has no GPU driver, else None (ask torch).

    Importing torch costs 2-3 s on a 2-core machine, and every study, trial parent and report probes the
    machine: without a GPU driver there is nothing else torch could tell.
    """
    import importlib.metadata

    if any(os.path.exists(p) for p in _GPU_DRIVER_PATHS):
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
