"""The measurement rule every trial, final and validation run follows: model, images and timed rounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.engine.config import EngineConfig


@dataclass(frozen=True)
class ScanSpec:
    """How every trial is measured: the model, the images, and the rounds of batches that are timed.

    A *round* is one batch on every replica. A trial scans ``warmup_rounds + rounds + drain_rounds`` rounds
    of the configuration's own batch sizes: the clock starts once every replica has finished its warm-up
    batches (start-up and first-call costs are recorded apart), stops when ``rounds`` more rounds of images
    are done, and the last round (the drain, when replicas finish one after another) is never timed. So any
    configuration is measured as the full run runs it, with all replicas contributing. Images start at
    ``offset`` (the study validates on images its trials did not use); where the database is shorter than a
    trial needs, images are reused in a fixed order under new ids, and the measurement says so.
    ``scan_size`` caps the images of one trial (None: what each configuration needs). ``min_timed_images``
    lengthens the timed part of small rounds (a 4-round window of 8-image batches lasts under a second, and
    on a shared machine one second is mostly noise).
    """

    dataset: str
    model: str
    rounds: int = 4
    warmup_rounds: int = 1
    drain_rounds: int = 1
    min_timed_images: int = 0
    scan_size: int | None = None
    offset: int = 0
    timeout_s: float = 600.0
    image_column: str | None = None
    split: str | None = None
    fake_delay_s: float = 0.0  # seconds slept per image by ``fake:`` models (tests of slow trials); else unused

    @staticmethod
    def round_images(config: EngineConfig) -> int:
        """Images in one batch round of ``config`` (every CPU and GPU replica one batch)."""
        gpu_replicas = config.consumers - config.cpu_models
        return config.cpu_models * config.cpu_batch + gpu_replicas * config.gpu_batch

    def timed_rounds(self, config: EngineConfig) -> int:
        """Timed rounds of ``config``: ``rounds``, or more when they hold fewer than ``min_timed_images``."""
        size = self.round_images(config)
        return max(self.rounds, -(-self.min_timed_images // size)) if size > 0 else self.rounds

    def images_for(self, config: EngineConfig) -> int:
        """Images one trial of ``config`` scans (warm-up, timed and drain rounds)."""
        return self.round_images(config) * (self.warmup_rounds + self.timed_rounds(config) + self.drain_rounds)

    def too_small_for(self, config: EngineConfig) -> str | None:
        """Why ``scan_size`` cannot time ``config`` fairly, or None."""
        need = self.images_for(config)
        if self.scan_size is not None and need > self.scan_size:
            return (
                f"--scan-size {self.scan_size} is smaller than the {need} images that "
                f"{self.timed_rounds(config)} timed rounds of {self.round_images(config)} images (plus warm-up and "
                "drain) need"
            )
        return None

    def describe(self) -> dict[str, Any]:
        """The measurement rule, for signatures and study notes."""
        return {
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "drain_rounds": self.drain_rounds,
            "min_timed_images": self.min_timed_images,
            "scan_size": self.scan_size,
            "offset": self.offset,
        }
