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
from typing import TYPE_CHECKING, Any

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


class HostStager:
    """Host uint8 batches to a device through one reused host buffer, pinned for CUDA, and a non-blocking copy.

    Pinned (page-locked) memory lets the copy engine move the batch while the CPU goes on; allocating it is slow
    (a system call and page locking), so the buffer is kept and grown only when a larger batch arrives. On the
    CPU the batch is used where it is (no copy at all).

    Example:
        >>> stager = HostStager("meta", pin=False)
        >>> stager.to_device(np.zeros((4, 2, 2, 3), np.uint8)).device.type, stager.allocations
        ('meta', 1)
    """

    def __init__(self, device: str, *, pin: bool | None = None) -> None:
        """``pin`` defaults to True for a CUDA device (it needs CUDA to be available)."""
        self.device = device
        self.pin = device.startswith("cuda") if pin is None else pin
        self.buffer: torch.Tensor | None = None
        self.allocations = 0

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """``batch`` on the device (the returned tensor is only valid until the next call's copy)."""
        import torch

        host = torch.from_numpy(batch)
        if self.device == "cpu":
            return host
        buf = self.buffer
        if buf is None or buf.shape[0] < host.shape[0] or buf.shape[1:] != host.shape[1:]:
            buf = torch.empty(host.shape, dtype=torch.uint8)
            self.buffer = buf.pin_memory() if self.pin else buf
            self.allocations += 1
        assert self.buffer is not None
        staging = self.buffer[: host.shape[0]]
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)


class _Graph:
    """One captured CUDA graph of normalise + tower for a fixed batch size; smaller batches are zero-padded."""

    def __init__(self, graph: Any, static_in: torch.Tensor, static_out: torch.Tensor) -> None:
        """Use :meth:`capture`."""
        self.graph, self.static_in, self.static_out = graph, static_in, static_out
        self.size = int(static_in.shape[0])

    @classmethod
    def capture(cls, forward: TowerFn, size: int, crop: int, device: str) -> _Graph:
        """Warm ``forward`` up on a side stream (as torch asks before a capture), then capture it once."""
        import torch

        static_in = torch.zeros((size, crop, crop, 3), dtype=torch.uint8, device=device)
        with torch.inference_mode():
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuBLAS handles and workspaces are made here, outside the capture
                    forward(static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = forward(static_in)
        return cls(graph, static_in, static_out)

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of any number of device uint8 images, replaying the graph per chunk of ``size``."""
        import torch

        outs = []
        for start in range(0, int(pixels.shape[0]), self.size):
            chunk = pixels[start : start + self.size]
            k = int(chunk.shape[0])
            self.static_in[:k].copy_(chunk, non_blocking=True)
            if k < self.size:
                self.static_in[k:].zero_()
            self.graph.replay()
            outs.append(self.static_out[:k].clone())  # the next replay overwrites static_out
        return torch.cat(outs)


class TorchBackend(_Timed, Backend):
    """The CLIP image tower in PyTorch, on CPU or one CUDA device (fp16/bf16/fp32 on GPUs).

    ``spec.backend``: ``eager``; ``compile`` (``torch.compile``, inductor, frozen weights; kernels built for
    ``spec.batch`` images, smaller batches zero-padded); ``channels-last`` (GPU: conv weights and input in
    NHWC memory); ``cuda-graphs`` (GPU: normalise + tower captured once for ``spec.batch`` images and
    replayed); on CPU also ``bf16`` (bfloat16 weights, compiled). On a GPU the batch goes through a reused
    pinned host buffer (:class:`HostStager`) and a non-blocking copy; normalisation runs on the device on the
    uint8 tensor. A batch a GPU decoder left on the device (:meth:`embed_decoded`) is used where it is. The
    tower is autotune's own (:mod:`autotune.models.tower`), read from the checkpoint.
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
        if not on_cpu and spec.device.startswith("cuda"):
            torch.cuda.set_device(spec.device)  # graphs, streams and compiled kernels go to this replica's GPU
        self._stager = HostStager(spec.device)
        self._fn: TowerFn = self.tower
        self._compiled_size: int | None = None
        self._cache_root = cache_root
        self._compile = spec.backend in ("compile", "bf16")
        self._graphs = spec.backend == "cuda-graphs"
        if self._graphs and on_cpu:
            raise ConfigError("backend 'cuda-graphs' is for GPU replicas (gpu_backend), not CPU ones")
        self._graph: _Graph | None = None
        if self._compile:
            self._fn = self._compiled()
            if spec.batch:
                self._warm(int(spec.batch))
        elif self._graphs and spec.batch:
            self._graph = _Graph.capture(self._eager_forward, spec.batch, self.preprocess_spec.crop, spec.device)
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
        return self._stager.to_device(batch)

    def _eager_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise a device uint8 batch on the device and run the tower as it is (what a graph captures)."""
        from autotune.preprocess import normalize

        x = normalize(pixels, self.preprocess_spec, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        return self._fn(x)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise a device uint8 batch and run the (possibly compiled, or captured) tower."""
        from autotune.preprocess import normalize

        if self._graph is not None:
            return self._graph.run(pixels)
        x = normalize(pixels, self.preprocess_spec, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        if self._compiled_size is not None:
            return _padded_call(self._fn, x, self._compiled_size)
        return self._fn(x)

    def _ready_for(self, size: int) -> None:
        """Build compiled kernels or capture the graph on the first batch when no batch size was given."""
        if (self._compile and self._compiled_size is None) or (self._graphs and self._graph is None):
            # Counted as setup, not forward.
            t = time.perf_counter()
            if self._compile:
                self._warm(size)
            else:
                crop = self.preprocess_spec.crop
                self._graph = _Graph.capture(self._eager_forward, size, crop, self.device)
            self.setup_seconds += time.perf_counter() - t

    def embed_decoded(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a uint8 NHWC tensor a batch decoder left on this device: no host round trip."""
        torch = self.torch
        if pixels.device != torch.device(self.device):
            return super().embed_decoded(pixels)
        self._ready_for(int(pixels.shape[0]))
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self._forward(pixels).float().cpu().numpy()
        self._times["forward"] += time.perf_counter() - t1
        return out

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalise on the device, run the tower, return float32 numpy."""
        from autotune.preprocess import normalize

        torch = self.torch
        self._ready_for(int(batch.shape[0]))
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = self._to_device(batch)
            if self._compiled_size is None and self._graph is None:
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

