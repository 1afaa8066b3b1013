"""What a model is, without loading it: where it lives, its weights' digest, and the facts a scan needs.

Nothing here imports torch or transformers on the hot path. A scan's workers and its parent ask for the same
facts (embedding width, the image tower's shape, the preprocessing) before every trial; reading them off
``transformers``' config classes costs a 5 s import of transformers per process, so they are computed with
transformers once and kept in a small JSON sidecar under ``cache_dir("facts")``, keyed by the model folder and
the sizes and mtimes of its config files (and the transformers version that read them). A changed config, a
different folder or another transformers version computes them afresh.

Example:
    >>> facts = model_facts("synthetic:tiny")
    >>> facts.embed_dim, facts.crop, facts.vision["hidden_size"]
    (32, 224, 64)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.atomic import DiskFullError, atomic_write_json
from autotune.cache import cache_dir
from autotune.errors import ModelError, one_line
from autotune.models.synthetic import MARKER_FILE, SYNTHETIC_PREFIX, build_synthetic, is_synthetic
from autotune.preprocess.spec import PreprocessSpec

STAND_IN = f"{SYNTHETIC_PREFIX}clip-vit-base-patch32"
# Seconds to wait for the hub's first answer: a machine without network must fail in seconds, not minutes.
_DEFAULT_HUB_TIMEOUT = 5.0

_CONFIG_FILES = ["config.json", "preprocessor_config.json", "processor_config.json", MARKER_FILE]
_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
]
_SAFETENSORS_FILES = ["*.safetensors", "model.safetensors.index.json"]
_BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
# A hub id: "name" or "owner/name" (letters, digits, -_.), the shape huggingface_hub accepts.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Bump when the sidecar's fields or their meaning change: older sidecars are then recomputed, never misread.
FACTS_FORMAT = 1
# The files the facts are read from: any change of size or mtime (or a file appearing) recomputes them.
_FACT_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
# The vision config entries the transformers-free tower is built from (autotune.models.tower).
VISION_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)


def _env_flag(name: str) -> bool:
    """Whether an environment flag is set the way huggingface_hub reads it (1/on/yes/true)."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """Whether the hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, now or at hub import)."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_timeout() -> float:
    """Seconds to wait for hub metadata: $HF_HUB_ETAG_TIMEOUT if set, else a short default."""
    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return _DEFAULT_HUB_TIMEOUT


def weight_files(path: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads: safetensors when present, else PyTorch ``.bin`` files."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    return sorted(p for p in path.glob("*.bin") if p.name.startswith("pytorch_model"))


def _not_available(model_id: str) -> ModelError:
    """The one-line error for a hub model that cannot be had on this machine."""
    return ModelError(
        f"model '{model_id}' is not cached and the hub cannot be reached; "
        f"use a local directory or the offline stand-in --model {STAND_IN}"
    )


def _complete_snapshot(folder: Path) -> bool:
    """Whether a downloaded snapshot has a config and weights (an interrupted download may lack them)."""
    return (folder / "config.json").is_file() and bool(weight_files(folder))


def _from_hub(model_id: str) -> Path:
    """Resolve a hub id to a local snapshot: the cache first, then (unless offline) a download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    base = _CONFIG_FILES + _TOKENIZER_FILES
    with contextlib.suppress(LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        local = Path(snapshot_download(model_id, local_files_only=True, allow_patterns=base + _SAFETENSORS_FILES))
        if _complete_snapshot(local):
            return local
    if _hub_offline():
        raise _not_available(model_id)
    timeout = _hub_timeout()
    try:
        # Safetensors first (no pickle, faster to load); only a repo without them gets its .bin weights.
        folder = Path(snapshot_download(model_id, allow_patterns=base + _SAFETENSORS_FILES, etag_timeout=timeout))
        if not weight_files(folder):
            folder = Path(snapshot_download(model_id, allow_patterns=base + _BIN_FILES, etag_timeout=timeout))
    except GatedRepoError as exc:
        raise ModelError(f"model '{model_id}' is gated on the hub: accept its terms and log in first") from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(f"model '{model_id}' was not found on the hub (wrong id, or private)") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"model '{model_id}': revision not found on the hub") from exc
    except HFValidationError as exc:
        raise ModelError(f"'{model_id}' is neither a local directory nor a valid hub model id") from exc
    except Exception as exc:  # offline mode, DNS failure, timeouts, proxies: all mean "cannot be had here"
        raise _not_available(model_id) from exc
    if not _complete_snapshot(folder):
        raise ModelError(f"model '{model_id}' on the hub has no config.json or no weight files")
    return folder


def resolve_model(model_id: str) -> tuple[Path, bool]:
    """Turn a model id into a local folder and whether it is a random-weight stand-in.

    ``synthetic:<variant>`` builds (once) an offline stand-in, an existing directory is used as is, anything
    else is a hub id looked up in the local cache, then downloaded unless ``HF_HUB_OFFLINE`` is set.

    Example:
        >>> path, synthetic = resolve_model("synthetic:tiny")
        >>> (path / "config.json").is_file(), synthetic
        (True, True)
    """
    model_id = str(model_id).strip()
    if not model_id:
        raise ModelError("empty model id; try --model openai/clip-vit-base-patch32 or --model " + STAND_IN)
    if model_id.startswith(SYNTHETIC_PREFIX):
        return build_synthetic(model_id[len(SYNTHETIC_PREFIX) :]), True
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"model directory {local} has no config.json (not a transformers CLIP model)")
        return local.resolve(), is_synthetic(local)
    if local.exists():
        raise ModelError(f"model path {local} is a file; expected a model directory or a hub id")
    if model_id.startswith((".", "/", "~")):
        raise ModelError(f"model directory {model_id} does not exist")
    if not _HUB_ID.match(model_id):
        raise ModelError(f"model '{model_id}' is neither an existing directory nor a valid hub model id")
    folder = _from_hub(model_id)
    return folder, is_synthetic(folder)


def _hash_files(files: Sequence[Path]) -> str:
    """Return the sha256 hex digest of the files' bytes, concatenated in the given order."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def weights_hash(path: Path) -> str:
    """Return 16 hex chars of the sha256 of a model folder's weight files, cached by file size and mtime.

    The digest is kept in a sidecar json under the cache (model folders may be read-only hub snapshots), so a
    600 MB checkpoint is read once; any change of size or mtime of a weight file invalidates it.

    Example:
        >>> path, _ = resolve_model("synthetic:tiny")
        >>> len(weights_hash(path))
        16
    """
    files = weight_files(path)
    if not files:
        raise ModelError(f"model directory {path} has no weight files (*.safetensors or pytorch_model*.bin)")
    key = []
    for file in files:
        st = file.stat()  # follows hub-cache symlinks to the blob: its size/mtime are what matter
        key.append([file.name, st.st_size, st.st_mtime_ns])
    real = str(path.resolve())
    sidecar = cache_dir("hashes") / f"{hashlib.sha1(real.encode()).hexdigest()[:20]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if cached["path"] == real and cached["files"] == key:
            return str(cached["sha256"])[:16]
    full = _hash_files(files)
    record = {"path": real, "files": key, "sha256": full}
    # Atomic: a concurrent reader sees the old or the new record, never half of one. The sidecar only saves
    # time, so a cache that cannot take it (read-only, full) costs a re-hash next time, not the run.
    with contextlib.suppress(OSError, DiskFullError):
        atomic_write_json(sidecar, record, indent=None)
    return full[:16]


@dataclass(frozen=True)
class ModelFacts:
    """What a backend and a scan need to know about a model, read without loading its weights.

    ``image`` holds the preprocessing (``shortest_edge``, ``crop``, ``mean``, ``std``, ``resample``) as plain
    values, so a worker that runs no torch (ONNX Runtime) can normalise without importing it; ``preprocess``
    builds the :class:`~autotune.preprocess.PreprocessSpec`. ``vision`` holds the image tower's shape
    (:data:`VISION_KEYS`).
    """

    path: Path
    synthetic: bool
    weights_hash: str
    embed_dim: int
    image: dict[str, Any]
    vision: dict[str, Any]

    @property
    def arch(self) -> str:
        """The image tower's summary, e.g. ``vit-768x12-p32-224/proj512`` (what profiles record as model_arch)."""
        v = self.vision
        return arch_string(v["hidden_size"], v["num_hidden_layers"], v["patch_size"], v["image_size"], self.embed_dim)

    @property
    def preprocess(self) -> PreprocessSpec:
        """The fast path's settings."""
        return PreprocessSpec(
            shortest_edge=int(self.image["shortest_edge"]),
            crop=int(self.image["crop"]),
            mean=_triple(self.image["mean"]),
            std=_triple(self.image["std"]),
            resample=int(self.image["resample"]),
        )

    @property
    def crop(self) -> int:
        """The square side the image tower is fed."""
        return int(self.image["crop"])

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean, in 0-1 units."""
        return _triple(self.image["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalisation standard deviation, in 0-1 units."""
        return _triple(self.image["std"])


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    """Three floats from a stored list."""
    return float(values[0]), float(values[1]), float(values[2])


def _transformers_version() -> str:
    """The installed transformers version ("" without it), read from its metadata, not by importing it."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return ""


def _facts_key(path: Path) -> list[list[Any]]:
    """Name, size and mtime of each config file the facts are read from (missing ones are left out)."""
    key = []
    for name in _FACT_FILES:
        with contextlib.suppress(FileNotFoundError):
            st = (path / name).stat()  # follows hub-cache symlinks to the blob
            key.append([name, st.st_size, st.st_mtime_ns])
    return key


def _read_facts(path: Path) -> dict[str, Any]:
    """Embedding width, preprocessing and vision shape, read through transformers (the slow, exact way)."""
    from transformers import CLIPConfig, CLIPImageProcessor

    try:
        processor = CLIPImageProcessor.from_pretrained(str(path))
        config: Any = CLIPConfig.from_pretrained(str(path))
    except Exception as exc:
        first = one_line(exc)
        raise ModelError(f"cannot read the config of {path}: {type(exc).__name__}: {first}") from exc
    spec = PreprocessSpec.from_processor(processor)  # ConfigError for a pipeline the fast path cannot run
    vision = config.vision_config
    image_size = vision.image_size
    return {
        "embed_dim": int(config.projection_dim),
        "image": {
            "shortest_edge": spec.shortest_edge,
            "crop": spec.crop,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resample": spec.resample,
        },
        "vision": {
            **{key: getattr(vision, key) for key in VISION_KEYS},
            "image_size": int(image_size[0] if isinstance(image_size, list | tuple) else image_size),
        },
    }


def facts_sidecar(path: Path) -> Path:
    """Where the facts of the model folder ``path`` are kept: ``cache_dir("facts")/<sha1 of its real path>.json``."""
    real = str(path.resolve())
    return cache_dir("facts") / f"{hashlib.sha1(real.encode()).hexdigest()[:20]}.json"


def arch_string(hidden: int, layers: int, patch: int, image_size: int, projection: int) -> str:
    """``vit-{hidden}x{layers}-p{patch}-{image_size}/proj{projection}``: one spelling for facts and configs."""
    return f"vit-{hidden}x{layers}-p{patch}-{image_size}/proj{projection}"


def model_facts(model_id: str) -> ModelFacts:
    """Folder, weights hash, embedding width, preprocessing and tower shape of a model; no weights loaded.

    Read from the facts sidecar when it matches the model's config files and the installed transformers,
    else computed through transformers and written back (atomically; a cache that cannot take it costs a
    recomputation next time, never the run).

    Example:
        >>> model_facts("synthetic:tiny").embed_dim
        32
    """
    path, synthetic = resolve_model(model_id)
    real = str(path.resolve())
    key = {"format": FACTS_FORMAT, "path": real, "files": _facts_key(path), "transformers": _transformers_version()}
    sidecar = facts_sidecar(path)
    record: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if all(cached[k] == v for k, v in key.items()):
            record = {k: cached[k] for k in ("embed_dim", "image", "vision")}
    if record is None:
        record = _read_facts(path)
        with contextlib.suppress(OSError, DiskFullError):
            atomic_write_json(sidecar, {**key, **record}, indent=None)
    return ModelFacts(
        path=path,
        synthetic=synthetic,
        weights_hash=weights_hash(path),
        embed_dim=int(record["embed_dim"]),
        image=dict(record["image"]),
        vision=dict(record["vision"]),
    )
