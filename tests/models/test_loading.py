"""Tests of model resolution and loading: stand-ins, local folders, hub errors, towers and embeddings."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from autotune.errors import ModelError
from autotune.models import (
    ImageTower,
    LoadedClip,
    encode_images_reference,
    encode_texts,
    image_tower,
    load_clip,
    resolve_model,
    weights_hash,
)


@pytest.fixture(scope="module")
def loaded(tiny_model: str) -> LoadedClip:
    """The tiny stand-in, loaded once for the module."""
    return load_clip(tiny_model)


def test_loaded_fields(loaded: LoadedClip, tiny_model: str) -> None:
    """The dataclass describes the model: id, path, stand-in flag, sizes, normalisation, arch."""
    assert loaded.model_id == tiny_model
    assert loaded.synthetic is True
    assert (loaded.path / "config.json").is_file()
    assert not loaded.model.training
    assert loaded.embed_dim == 32 and loaded.image_size == 224
    assert loaded.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert loaded.image_std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert loaded.arch == "vit-64x2-p32-224/proj32"
    assert len(loaded.weights_hash) == 16 and int(loaded.weights_hash, 16) >= 0


def test_same_hash_by_id_and_by_path(loaded: LoadedClip) -> None:
    """Loading the stand-in's folder directly gives the same weights hash and still knows it is a stand-in."""
    again = load_clip(str(loaded.path))
    assert again.weights_hash == loaded.weights_hash
    assert again.synthetic is True
    assert again.path == loaded.path


def test_weights_hash_is_cached_and_invalidated(loaded: LoadedClip, tmp_path: Path) -> None:
    """The digest is read from the sidecar while size/mtime hold, and recomputed when the file changes."""
    model_dir = tmp_path / "copy"
    shutil.copytree(loaded.path, model_dir)
    first = weights_hash(model_dir)
    assert first == loaded.weights_hash  # same bytes, same digest, wherever they live
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    # Same size and mtime, different bytes: the cached digest is (by design) trusted.
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_hash(model_dir) == first
    # A new mtime invalidates it.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights_hash(model_dir) != first


def test_image_tower_shape_and_norm(loaded: LoadedClip) -> None:
    """The tower maps a batch of pixels to unit float32 vectors of the projection width."""
    tower = image_tower(loaded)
    assert isinstance(tower, ImageTower) and not tower.training
    with torch.inference_mode():
        out = tower(torch.randn(3, 3, 224, 224))
    assert out.shape == (3, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)


def test_image_tower_keeps_only_vision_parts(loaded: LoadedClip) -> None:
    """The tower holds the vision model and projection only (no text tower weights to move or compile)."""
    names = {name.split(".")[0] for name, _ in ImageTower(loaded.model).named_parameters()}
    assert names == {"vision_model", "visual_projection"}


def test_image_tower_matches_get_image_features(loaded: LoadedClip) -> None:
    """The tower equals the model's own image features, normalised."""
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        ours = image_tower(loaded)(pixels)
        feats = loaded.model.get_image_features(pixel_values=pixels)
        feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        ref = torch.nn.functional.normalize(feats.float(), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_image_tower_half_input_returns_float32(loaded: LoadedClip) -> None:
    """A bfloat16 tower computes in bfloat16 but hands back float32 unit vectors."""
    model = load_clip(loaded.model_id, dtype=torch.bfloat16).model
    with torch.inference_mode():
        out = ImageTower(model)(torch.randn(2, 3, 224, 224, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)


def test_encode_texts(loaded: LoadedClip) -> None:
    """Text embeddings are unit float32 rows; different texts differ; long texts are truncated."""
    texts = ["a photo of a cat", "a photo of a dog", "felis catus", "word " * 200]
    emb = encode_texts(loaded, texts)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    assert not torch.allclose(emb[0], emb[1], atol=1e-4)
    # Batching does not change a text's embedding (padding is masked out of the pooled token).
    torch.testing.assert_close(encode_texts(loaded, texts[:1])[0], emb[0], atol=1e-5, rtol=0)
    assert encode_texts(loaded, []).shape == (0, 32)


def test_encode_images_reference_agrees_with_tower(loaded: LoadedClip) -> None:
    """The model-card path (processor + get_image_features) equals the tower fed the processor's pixels."""
    from PIL import Image

    images = [Image.new("RGB", (320, 240), (200, 30, 30)), Image.new("L", (100, 400), 128)]
    ref = encode_images_reference(loaded, images)
    assert ref.shape == (2, 32) and ref.dtype == torch.float32
    pixels = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, loaded.image_size, loaded.image_size)
    with torch.inference_mode():
        torch.testing.assert_close(image_tower(loaded)(pixels), ref, atol=1e-5, rtol=0)


def test_resolve_synthetic_and_local(tiny_model: str) -> None:
    """A stand-in id builds its folder; that folder resolves to itself."""
    path, synthetic = resolve_model(tiny_model)
    assert synthetic and (path / "model.safetensors").is_file()
    assert resolve_model(str(path)) == (path, True)


def test_unknown_hub_id_offline_is_fast_one_line_error() -> None:
    """Offline and not cached: a one-line ModelError pointing at the stand-in, with no network wait."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        resolve_model("openai/clip-vit-base-patch32")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert "not cached" in message and "synthetic:clip-vit-base-patch32" in message


def test_unknown_hub_id_via_load_clip() -> None:
    """load_clip surfaces the same error."""
    with pytest.raises(ModelError, match="synthetic:"):
        load_clip("someone/does-not-exist-clip")


def test_cached_hub_snapshot_is_found_offline(loaded: LoadedClip, tmp_path: Path, monkeypatch) -> None:
    """A model in the hub cache (snapshot layout) resolves offline, without a download."""
    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "models--openai--clip-vit-base-patch32"
    shutil.copytree(loaded.path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    path, synthetic = resolve_model("openai/clip-vit-base-patch32")
    assert path == repo / "snapshots" / commit
    assert synthetic is True  # the marker travelled with the copy
    assert load_clip("openai/clip-vit-base-patch32").weights_hash == loaded.weights_hash


def test_unknown_synthetic_variant() -> None:
    """An unknown stand-in name lists the variants."""
    with pytest.raises(ModelError, match="synthetic:tiny"):
        resolve_model("synthetic:huge")


def test_directory_without_config(tmp_path: Path) -> None:
    """A folder that is not a transformers model is refused up front."""
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("model_id", ["/no/such/model/dir", "./missing-model", "not a model id!", ""])
def test_bad_paths_and_ids(model_id: str) -> None:
    """Missing paths, malformed ids and empty ids are one-line ModelErrors."""
    with pytest.raises(ModelError) as info:
        resolve_model(model_id)
    assert "\n" not in str(info.value)


def test_corrupt_weights_are_a_model_error(loaded: LoadedClip, tmp_path: Path) -> None:
    """A truncated weights file fails as a ModelError, not a library traceback."""
    model_dir = tmp_path / "broken"
    shutil.copytree(loaded.path, model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError) as info:
        load_clip(str(model_dir))
    assert "\n" not in str(info.value)


def test_bad_device_is_a_model_error(tiny_model: str) -> None:
    """An unavailable device is reported as a ModelError."""
    with pytest.raises(ModelError, match="device"):
        load_clip(tiny_model, device="no-such-device")


@pytest.mark.slow
def test_vit_b32_stand_in_matches_real_architecture() -> None:
    """The ViT-B/32 stand-in has CLIP ViT-B/32's parameter count, arch string and processor settings."""
    loaded = load_clip("synthetic:clip-vit-base-patch32")
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert n_params == 151_277_313  # openai/clip-vit-base-patch32
    assert loaded.arch == "vit-768x12-p32-224/proj512"
    assert loaded.embed_dim == 512 and loaded.image_size == 224 and loaded.synthetic
    marker = json.loads((loaded.path / "autotune_synthetic.json").read_text(encoding="utf-8"))
    assert marker["variant"] == "clip-vit-base-patch32"
    with torch.inference_mode():
        out = image_tower(loaded)(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512)
    assert encode_texts(loaded, ["a photo of felis catus"]).shape == (1, 512)
