"""A machine's ceiling for a model: the images/s its matrix products allow, stored beside its profiles.

`autotune bench roofline` measures it (:mod:`autotune.bench.roofline`); this module holds the record, the
image tower's arithmetic, and the store, so that `report`, `profile show` and `bench ladder` can state a
figure as a share of the ceiling without importing torch.

Example:
    >>> roof = load_roofline(machine_id, arch)  # doctest: +SKIP
    >>> roof.share(85.0)  # doctest: +SKIP
    0.45
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.errors import ConfigError, one_line
from autotune.machine import cpu_flags
from autotune.tuner.profile import arch_key, machine_folder

ROOFLINE_FORMAT = 1
PRECISIONS = ("fp32", "bf16", "int8")
# Images per batch at which the products are timed: the batch sizes the space searches are 8-64; 16 is the
# middle of the range and large enough that a product is not dominated by call overhead.
SHAPE_BATCH = 16
# Vector extensions that decide which kernels a precision can use.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_isa() -> tuple[str, ...]:
    """The vector extensions of this CPU that matter for matrix products (from /proc/cpuinfo)."""
    return cpu_flags(_ISA_FLAGS)


def tower_products(vision: Mapping[str, Any], batch: int = SHAPE_BATCH) -> list[tuple[int, int, int, int]]:
    """The image tower's matrix products for a batch: (rows, inner, cols, count per image batch).

    Rows are the batch's tokens (patches plus the class token); the patch embedding is a product too (a strided
    convolution with no overlap), and attention's two token-by-token products are left out here (they are
    counted in :func:`tower_flops`, and are under 2% of ViT-B/32's arithmetic).
    """
    d, m, layers = int(vision["hidden_size"]), int(vision["intermediate_size"]), int(vision["num_hidden_layers"])
    patch, size, channels = int(vision["patch_size"]), int(vision["image_size"]), int(vision.get("num_channels", 3))
    patches = (size // patch) ** 2
    rows = batch * (patches + 1)
    return [
        (batch * patches, channels * patch * patch, d, 1),  # patch embedding
        (rows, d, d, 4 * layers),  # query, key, value and output projections
        (rows, d, m, layers),  # MLP up
        (rows, m, d, layers),  # MLP down
    ]


def tower_flops(vision: Mapping[str, Any]) -> float:
    """Floating-point operations to embed one image (2 per multiply-add), attention's token products included.

    Example:
        >>> vit_b32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        ...            "patch_size": 32, "image_size": 224}
        >>> round(tower_flops(vit_b32) / 1e9, 1)
        8.8
    """
    products = sum(2 * r * k * c * n for r, k, c, n in tower_products(vision, batch=1))
    tokens = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2 + 1
    attention = 2 * 2 * tokens * tokens * int(vision["hidden_size"]) * int(vision["num_hidden_layers"])
    return float(products + attention)


@dataclass(frozen=True)
class PrecisionPeak:
    """One precision's measured matrix-product throughput on all cores, and the kernel that ran it."""

    precision: str
    threads: int
    gflops: float | None
    kernel: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Roofline:
    """A machine's ceiling for one model architecture: images/s per precision, and the scan's ceiling.

    ``ceiling_images_per_s`` is the best precision's product-bound rate with preprocessing sharing the cores
    (``1 / (flops / peak + preprocess_s / cores)``); ``model_ceiling_images_per_s`` leaves preprocessing out.
    """

    machine_id: str
    arch: str
    cores: int
    isa: tuple[str, ...]
    gflop_per_image: float
    peaks: tuple[PrecisionPeak, ...]
    preprocess_s_per_image_per_core: float | None
    torch_version: str
    measured_at: str
    format: int = ROOFLINE_FORMAT
    notes: tuple[str, ...] = field(default_factory=tuple)

    def images_per_s(self, precision: str) -> float | None:
        """The product-bound images/s of one precision (None where it could not run)."""
        peak = next((p for p in self.peaks if p.precision == precision), None)
        if peak is None or not peak.gflops:
            return None
        return peak.gflops / self.gflop_per_image

    @property
    def best_precision(self) -> str:
        """The precision with the highest measured throughput."""
        ok = [p for p in self.peaks if p.gflops]
        if not ok:
            raise ConfigError("the roofline has no measured precision")
        return max(ok, key=lambda p: p.gflops or 0.0).precision

    @property
    def model_ceiling_images_per_s(self) -> float:
        """Images/s of the best precision's matrix products alone, on every core (0 when none was measured)."""
        return max((v for p in self.peaks if (v := self.images_per_s(p.precision)) is not None), default=0.0)

    @property
    def ceiling_images_per_s(self) -> float:
        """Images/s of the whole scan at best: the products plus the preprocessing, on the same cores."""
        model = self.model_ceiling_images_per_s
        if not model:
            return 0.0
        pre = (self.preprocess_s_per_image_per_core or 0.0) / max(self.cores, 1)
        return 1.0 / (1.0 / model + pre)

    def share(self, images_per_s: float) -> float:
        """A measured rate as a share of the scan's ceiling."""
        ceiling = self.ceiling_images_per_s
        return round(images_per_s / ceiling, 4) if ceiling else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures named plainly."""
        data = asdict(self)
        data["ceilings_images_per_s"] = {
            p.precision: round(v, 2) for p in self.peaks if (v := self.images_per_s(p.precision)) is not None
        }
        data["best_precision"] = self.best_precision if any(p.gflops for p in self.peaks) else None
        data["model_ceiling_images_per_s"] = round(self.model_ceiling_images_per_s, 2)
        data["ceiling_images_per_s"] = round(self.ceiling_images_per_s, 2)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Roofline:
        """Read a stored roofline; a file of another format or shape is a one-line ConfigError."""
        if data.get("format") != ROOFLINE_FORMAT:
            raise ConfigError(f"roofline format {data.get('format')!r}, expected {ROOFLINE_FORMAT}: measure it again")
        try:
            peaks = tuple(PrecisionPeak(**p) for p in data["peaks"])
            return cls(
                machine_id=str(data["machine_id"]), arch=str(data["arch"]), cores=int(data["cores"]),
                isa=tuple(data["isa"]), gflop_per_image=float(data["gflop_per_image"]), peaks=peaks,
                preprocess_s_per_image_per_core=data.get("preprocess_s_per_image_per_core"),
                torch_version=str(data["torch_version"]), measured_at=str(data["measured_at"]),
                notes=tuple(data.get("notes", ())),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"roofline file is malformed ({one_line(exc, typed=True)}): measure it again") from exc


def roofline_path(machine_id: str, arch: str, folder: Path | None = None) -> Path:
    """Where a machine's roofline for an architecture is stored: beside the machine's profiles."""
    return machine_folder(machine_id, folder) / f"roofline-{arch_key(arch)}.json"


def save_roofline(roof: Roofline, folder: Path | None = None) -> Path:
    """Store a roofline (atomically) beside its machine's profiles; returns the file."""
    path = roofline_path(roof.machine_id, roof.arch, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, roof.to_dict())
    return path


def load_roofline(machine_id: str, arch: str, folder: Path | None = None) -> Roofline | None:
    """The stored roofline of a machine and architecture, or None if it was never measured or is unreadable."""
    path = roofline_path(machine_id, arch, folder)
    try:
        return Roofline.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ConfigError):
        return None  # a damaged or outdated file only means the share is not shown: measure it again


def roofline_share(images_per_s: float, machine_id: str, arch: str, folder: Path | None = None) -> dict[str, Any]:
    """A rate as a share of the stored ceiling (``roofline_share``, ``ceiling_images_per_s``); empty when none.

    Example:
        >>> roofline_share(85.0, "xeon-2c-24g-cpu-1a2b3c", "vit-768x12-p32-224/proj512")  # doctest: +SKIP
        {'ceiling_images_per_s': 187.4, 'roofline_share': 0.4536}
    """
    roof = load_roofline(machine_id, arch, folder)
    if roof is None or not roof.ceiling_images_per_s:
        return {}
    return {"ceiling_images_per_s": round(roof.ceiling_images_per_s, 2), "roofline_share": roof.share(images_per_s)}
