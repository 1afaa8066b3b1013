"""PyTorch backends: the image tower eager or compiled (CPU, GPU), and its dynamic int8 quantisation (CPU).

Both run :class:`autotune.models.tower.ClipImageTower`, CLIP's image tower loaded straight from the checkpoint.
Compiled torch kernels are specialised to one batch size (smaller batches are zero-padded up to it) and live
in inductor's own cache, pointed at ``cache_dir("backends", "inductor")``. No artefact is unpickled: the int8
model is cached as a state dict of tensors and read back with ``torch.load(..., weights_only=True)``.

torch is imported where it is used, never at module level, and so are :mod:`autotune.models.tower` and
:mod:`autotune.preprocess`, which import torch themselves: importing the backends package (as an ONNX Runtime
or OpenVINO replica does) must not pay for torch (``tests/models/test_startup.py`` checks it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autotune.atomic import DiskFullError, atomic_write_json
from autotune.errors import ConfigError
from autotune.models.backends._base import Backend, BackendSpec, _quiet, _Timed
from autotune.models.backends._cache import artefact_path, backends_cache, materialise
from autotune.models.facts import ModelFacts, model_facts

if TYPE_CHECKING:  # typing only: at run time torch is imported where it is used (see above)
    import torch

    from autotune.models.tower import ClipImageTower

# A tower, or torch.compile's wrapper of it: pixels (N, 3, H, W) in, unit embeddings (N, D) out.
TowerFn = Callable[["torch.Tensor"], "torch.Tensor"]

# The int8 artefact's layout; part of its key, so caches of the old layout (a whole pickled module) are never read.
INT8_LAYOUT = "state-dict"
# The torch module the int8 state and the compiled kernels come from (autotune.models.tower); part of their
# keys, so artefacts made from transformers' modules are never taken for the tower's.
TOWER_FORMAT = "autotune-tower-1"
# Where the user pointed inductor's cache before we touched it (then we leave it there).
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def _quantised_linears(module: torch.nn.Module) -> None:
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


def _int8_skeleton(facts: ModelFacts) -> ClipImageTower:
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


def _padded_call(fn: TowerFn, x: torch.Tensor, size: int) -> torch.Tensor:
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


class TorchBackend(_Timed, Backend):
    """The CLIP image tower in PyTorch, on CPU or one CUDA device (fp16/bf16/fp32 on GPUs).

    ``spec.backend``: ``eager``; ``compile`` (``torch.compile``, inductor, frozen weights; kernels built for
    ``spec.batch`` images, smaller batches zero-padded); ``channels-last`` (GPU: conv weights and input in
    NHWC memory); on CPU also ``bf16`` (bfloat16 weights, compiled). On a GPU the batch goes through a reused
    pinned host buffer and a non-blocking copy; normalisation runs on the device as one fused op on the
    uint8 tensor. The tower is autotune's own (:mod:`autotune.models.tower`), read from the checkpoint.
    """

    def __init__(self, spec: BackendSpec, *, cache_root: Path | None = None) -> None:
        """Load the tower at the spec's device and precision; compile (and warm up) the compiled kinds."""
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
            # Module.to takes memory_format at run time; torch's overloads do not declare it.
            self.tower = self.tower.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._pinned: torch.Tensor | None = None
        self._fn: TowerFn = self.tower
        self._compiled_size: int | None = None
        self._cache_root = cache_root
        self._compile = spec.backend in ("compile", "bf16")
        if self._compile:
            self._fn = self._compiled()
            if spec.batch:
                self._warm(int(spec.batch))
        self.setup_seconds = time.perf_counter() - start

    def _compiled(self) -> TowerFn:
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

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
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

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
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
        """Materialise the quantised state (built once per weights and torch), then load it into the skeleton."""
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

