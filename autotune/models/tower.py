"""CLIP's image tower in plain torch, loaded straight from the checkpoint: no transformers import.

A scan's replica only runs the vision half of CLIP: patch embedding, a pre-norm transformer encoder, the
class token's post-norm and the visual projection. Building that through ``transformers.CLIPModel`` costs
each worker a 5 s import of transformers (it pulls in torch._dynamo, torch.distributed, sympy, scipy...)
before any weight is read. :class:`ClipImageTower` is the same computation, op for op (transformers' default
``sdpa`` attention, the same activations, the same order of operations), with transformers' parameter names,
so it loads the checkpoint's ``vision_model.*`` and ``visual_projection.*`` tensors directly and its outputs
equal ``CLIPModel.get_image_features`` (L2-normalised) to float rounding (tests check max |diff| <= 1e-5).
The shape comes from the model facts (:func:`autotune.models.facts.model_facts`), themselves cached.

Example:
    >>> from autotune.models.facts import model_facts
    >>> tower = load_tower(model_facts("synthetic:tiny"))
    >>> tower(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from autotune.errors import ModelError, one_line
from autotune.models.facts import ModelFacts, weight_files

# Checkpoint entries that belong to the image tower (a CLIPModel checkpoint also holds the text tower).
_PREFIXES = ("vision_model.", "visual_projection.")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """transformers' ``QuickGELUActivation`` (OpenAI CLIP's activation), written the same way."""
    return x * torch.sigmoid(1.702 * x)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' ``NewGELUActivation`` (the tanh approximation, in Python ops), written the same way."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# hidden_act -> the function transformers' ACT2FN maps it to (same ops, so the same numbers).
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class TowerConfig:
    """The image tower's shape: transformers' ``CLIPVisionConfig`` entries plus the projection width."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    projection_dim: int

    @classmethod
    def from_facts(cls, facts: ModelFacts) -> TowerConfig:
        """The tower config of a model; ModelError for an activation this tower does not implement."""
        vision = facts.vision
        act = str(vision["hidden_act"])
        if act not in _ACTIVATIONS:
            raise ModelError(
                f"model {facts.path} uses hidden_act={act!r}; the image tower implements "
                + ", ".join(sorted(_ACTIVATIONS))
            )
        return cls(
            hidden_size=int(vision["hidden_size"]),
            intermediate_size=int(vision["intermediate_size"]),
            num_hidden_layers=int(vision["num_hidden_layers"]),
            num_attention_heads=int(vision["num_attention_heads"]),
            num_channels=int(vision["num_channels"]),
            image_size=int(vision["image_size"]),
            patch_size=int(vision["patch_size"]),
            hidden_act=act,
            layer_norm_eps=float(vision["layer_norm_eps"]),
            projection_dim=int(facts.embed_dim),
        )


def _layer_norm(cfg: TowerConfig) -> nn.LayerNorm:
    """A LayerNorm over the hidden width, with the model's epsilon."""
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class _Embeddings(nn.Module):
    """Patch embedding (a strided conv without bias), class token and learned positions."""

    def __init__(self, cfg: TowerConfig) -> None:
        """Parameters named as in transformers' ``CLIPVisionEmbeddings``."""
        super().__init__()
        self.image_size = cfg.image_size
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        # _weight: no initialisation. On the meta device normal_ runs a Python decomposition whose first call
        # imports torch._dynamo (2-3 s), the very cost this module exists to avoid.
        self.position_embedding = nn.Embedding(
            positions, cfg.hidden_size, _weight=torch.empty(positions, cfg.hidden_size)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` pixels -> ``[N, 1 + patches, hidden]`` token embeddings."""
        n, _, height, width = pixel_values.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model ({self.image_size}).")
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(dtype=weight.dtype)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_embedding.expand(n, 1, -1), patches], dim=1)
        # transformers adds position_embedding(arange(positions)): a gather of every row, i.e. the weight.
        return tokens + self.position_embedding.weight


class _Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (transformers' default, sdpa)."""

    def __init__(self, cfg: TowerConfig) -> None:
        """Separate q/k/v/out projections, named as in transformers' ``CLIPAttention``."""
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, hidden]`` -> ``[N, T, hidden]``."""
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=self.scale, is_causal=False)
        out = out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous()
        return self.out_proj(out)


class _Mlp(nn.Module):
    """fc1, activation, fc2."""

    def __init__(self, cfg: TowerConfig) -> None:
        """Layers named as in transformers' ``CLIPMLP``."""
        super().__init__()
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., hidden]`` -> ``[..., hidden]``."""
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    """One pre-norm encoder layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: TowerConfig) -> None:
        """Sub-modules named as in transformers' ``CLIPEncoderLayer``."""
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.layer_norm1 = _layer_norm(cfg)
        self.mlp = _Mlp(cfg)
        self.layer_norm2 = _layer_norm(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual attention block and one residual MLP block."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    """The stack of encoder layers (``encoder.layers.<i>``)."""

    def __init__(self, cfg: TowerConfig) -> None:
        """``num_hidden_layers`` layers."""
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every layer in order."""
        for layer in self.layers:
            x = layer(x)
        return x


class _VisionModel(nn.Module):
    """transformers' ``CLIPVisionModel``: embeddings, pre-norm, encoder, post-norm of the class token."""

    def __init__(self, cfg: TowerConfig) -> None:
        """Sub-modules named as in transformers (``pre_layrnorm`` keeps its historical spelling)."""
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = _layer_norm(cfg)
        self.encoder = _Encoder(cfg)
        self.post_layernorm = _layer_norm(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels -> the pooled (post-normed class token) states ``[N, hidden]``."""
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return self.post_layernorm(hidden[:, 0, :])


class ClipImageTower(nn.Module):
    """The image half of CLIP, pixels -> float32 unit embeddings, with transformers' parameter names.

    Its state dict has the keys of a CLIPModel checkpoint's image half (``vision_model.*``,
    ``visual_projection.weight``), so checkpoints load into it as they are, and quantised copies of it
    (``quantize_dynamic`` on its ``nn.Linear`` layers) have the layout the int8 backend caches.
    """

    def __init__(self, cfg: TowerConfig) -> None:
        """An uninitialised tower of shape ``cfg`` (weights come from a checkpoint)."""
        super().__init__()
        self.config = cfg
        self.vision_model = _VisionModel(cfg)
        self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed normalised pixels ``[N, 3, H, W]`` into float32 unit vectors ``[N, D]``."""
        pooled = self.vision_model(pixel_values)
        # In float32 whatever the tower's dtype: half-precision norms lose too much for cosine ranking.
        return F.normalize(self.visual_projection(pooled).float(), dim=-1)


def empty_tower(facts: ModelFacts) -> ClipImageTower:
    """A tower of the model's shape on the meta device: no memory, no initialisation (weights come next)."""
    with torch.device("meta"):
        return ClipImageTower(TowerConfig.from_facts(facts))


def _read_file(file: Path, wanted: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The ``wanted`` tensors of one weight file (safetensors, else a PyTorch zip or legacy file)."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle is not a dict
                if name in wanted:
                    yield name, handle.get_tensor(name)
        return
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        if name in wanted:
            yield name, tensor


def read_tower_state(path: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The image tower's tensors from a model folder's weight files; ModelError if one is missing or unreadable.

    Only the image half is read (the text tower's tensors of a CLIPModel checkpoint are skipped).
    """
    files = weight_files(path)
    if not files:
        raise ModelError(f"model directory {path} has no weight files (*.safetensors or pytorch_model*.bin)")
    state: dict[str, torch.Tensor] = {}
    try:
        for file in files:
            state.update(_read_file(file, wanted))
    except Exception as exc:  # truncated or corrupt files: one line, like load_clip's
        first = one_line(exc)
        raise ModelError(f"cannot read the image tower from {path}: {type(exc).__name__}: {first}") from exc
    missing = sorted(wanted - set(state))
    if missing:
        raise ModelError(
            f"model {path} has no {missing[0]} ({len(missing)} image-tower tensors missing): not a CLIP checkpoint"
        )
    return state


def load_tower(facts: ModelFacts, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ClipImageTower:
    """The model's fp32 image tower from its checkpoint, moved to ``device``/``dtype``, frozen, in eval mode.

    Example:
        >>> from autotune.models.facts import model_facts
        >>> load_tower(model_facts("synthetic:tiny")).training
        False
    """
    tower = empty_tower(facts)
    state = read_tower_state(facts.path, set(tower.state_dict()))
    # assign: the checkpoint's tensors become the parameters (no copy into freshly allocated ones); a
    # half-precision checkpoint is widened to float32 first, as from_pretrained(dtype=float32) does.
    tower.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    try:
        tower = tower.to(device=device, dtype=dtype)
    except Exception as exc:  # e.g. "cuda" on a machine without it
        first = one_line(exc) or type(exc).__name__
        raise ModelError(f"cannot move model {facts.path} to device '{device}': {first}") from exc
    return tower.eval().requires_grad_(False)
