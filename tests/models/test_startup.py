"""Replica start-up: the transformers-free image tower equals transformers' CLIP, model facts come from a
sidecar, and a replica whose artefact is cached imports no transformers (and, for ONNX Runtime / OpenVINO, no
torch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autotune.errors import ModelError
from autotune.models import facts as facts_module
from autotune.models.backends import BackendSpec, backend_unavailable, build_backend
from autotune.models.facts import model_facts
from autotune.models.tower import load_tower

# Pixels the towers are compared on: a fixed draw of normalised-looking values (3 images, 224 px).
_GEN = torch.Generator().manual_seed(3)
PIXELS = torch.randn(3, 3, 224, 224, generator=_GEN)


def _transformers_embeddings(model_dir: Path | str, pixels: torch.Tensor) -> torch.Tensor:
    """The reference: transformers' ``CLIPModel.get_image_features``, L2-normalised, in float32."""
    from transformers import CLIPModel

    model: Any = CLIPModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels)
    features = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4 / 5
    return F.normalize(features.float(), dim=-1)


def _assert_tower_matches(model_dir: Path | str, pixels: torch.Tensor = PIXELS) -> None:
    """autotune's tower and transformers' CLIP give the same embeddings (max |diff| 1e-5, cosine 1.0)."""
    tower = load_tower(model_facts(str(model_dir)))
    with torch.inference_mode():
        ours = tower(pixels)
    theirs = _transformers_embeddings(model_dir, pixels)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    assert float((ours - theirs).abs().max()) <= 1e-5
    assert float((ours * theirs).sum(dim=-1).min()) >= 1.0 - 1e-6


def _perturbed_copy(source: Path, dest: Path, *, hidden_act: str, seed: int) -> Path:
    """A copy of a CLIP folder whose image-tower tensors are all redrawn (layer norms, biases, class token...).

    Default initialisation leaves layer norms at weight 1 / bias 0, where a tower that skipped one would still
    match; redrawn weights leave no parameter without an effect on the output.
    """
    from transformers import CLIPConfig, CLIPModel

    config: Any = CLIPConfig.from_pretrained(str(source))
    config.vision_config.hidden_act = hidden_act
    model: Any = CLIPModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in [*model.vision_model.named_parameters(), *model.visual_projection.named_parameters()]:
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * noise)
            else:
                param.copy_(0.1 * noise)
    model.save_pretrained(str(dest), safe_serialization=True)
    shutil.copy(source / "preprocessor_config.json", dest / "preprocessor_config.json")
    return dest


def test_tower_matches_transformers_on_the_stand_in(tiny_model: str) -> None:
    """The tiny stand-in (random weights, transformers' initialisation) embeds the same through both."""
    _assert_tower_matches(model_facts(tiny_model).path)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_tower_matches_transformers_with_every_weight_redrawn(hidden_act: str, tiny_model: str, tmp_path: Path) -> None:
    """Every tensor matters (norms, biases, class token, positions, projection), both CLIP activations."""
    folder = _perturbed_copy(model_facts(tiny_model).path, tmp_path / "model", hidden_act=hidden_act, seed=11)
    _assert_tower_matches(folder)


@pytest.mark.slow
def test_tower_matches_transformers_on_a_trained_model(trained_model: str) -> None:
    """A model trained offline (meaningful activations) embeds the same through both."""
    _assert_tower_matches(trained_model)


@pytest.mark.slow
def test_tower_matches_transformers_on_vit_b32() -> None:
    """The ViT-B/32 stand-in: 12 layers of 768 wide, the shape a tuner measures."""
    _assert_tower_matches(model_facts("synthetic:clip-vit-base-patch32").path, PIXELS[:2])


def test_tower_reads_only_the_image_half(tiny_model: str) -> None:
    """The tower holds transformers' image-tower names and nothing of the text tower."""
    tower = load_tower(model_facts(tiny_model))
    names = set(tower.state_dict())
    assert "visual_projection.weight" in names and "vision_model.pre_layrnorm.weight" in names
    assert not any(name.startswith("text") for name in names)
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    assert all(p.device.type == "cpu" for p in tower.parameters())  # nothing left on the meta device


def test_tower_refuses_unknown_activation(tiny_model: str, tmp_path: Path) -> None:
    """An activation the tower does not implement is a one-line ModelError naming it."""
    folder = tmp_path / "model"
    shutil.copytree(model_facts(tiny_model).path, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["vision_config"]["hidden_act"] = "xielu"
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match="xielu") as info:
        load_tower(model_facts(str(folder)))
    assert "\n" not in str(info.value)


def test_tower_refuses_a_checkpoint_missing_a_tensor(tiny_model: str, tmp_path: Path) -> None:
    """A checkpoint without one of the tower's tensors is a one-line ModelError, not a half-loaded tower."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(model_facts(tiny_model).path, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["vision_model.post_layernorm.bias"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="post_layernorm.bias") as info:
        load_tower(model_facts(str(folder)))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ facts sidecar


def test_facts_equal_what_transformers_reads(tiny_model: str) -> None:
    """The sidecar holds what transformers' config and image processor say."""
    from transformers import CLIPConfig, CLIPImageProcessor

    from autotune.preprocess import PreprocessSpec

    facts = model_facts(tiny_model)
    config: Any = CLIPConfig.from_pretrained(str(facts.path))
    assert facts.embed_dim == config.projection_dim == 32
    assert facts.preprocess == PreprocessSpec.from_processor(CLIPImageProcessor.from_pretrained(str(facts.path)))
    for key in facts_module.VISION_KEYS:
        assert facts.vision[key] == getattr(config.vision_config, key), key
    assert (facts.crop, facts.mean, facts.std) == (224, facts.preprocess.mean, facts.preprocess.std)


def test_facts_sidecar_is_reused_and_invalidated(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facts are read once per config state: a changed config file, a corrupt sidecar or another transformers
    version computes them again; otherwise transformers is not asked."""
    folder = tmp_path / "model"
    shutil.copytree(model_facts(tiny_model).path, folder)
    real_read = facts_module._read_facts
    calls: list[Path] = []

    def counting(path: Path) -> dict[str, Any]:
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(facts_module, "_read_facts", counting)
    first = model_facts(str(folder))
    assert len(calls) == 1
    assert model_facts(str(folder)) == first and len(calls) == 1  # from the sidecar
    config = folder / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model_facts(str(folder)) == first and len(calls) == 2  # a touched config: read again
    facts_module.facts_sidecar(folder).write_text("{not json", encoding="utf-8")
    assert model_facts(str(folder)) == first and len(calls) == 3  # a corrupt sidecar: read again
    monkeypatch.setattr(facts_module, "_transformers_version", lambda: "0.0.0")
    assert model_facts(str(folder)) == first and len(calls) == 4  # another transformers: read again


def test_preprocess_spec_for_matches_the_processor(tiny_model: str) -> None:
    """The scan's preprocessing comes from the facts, equal to the processor's."""
    from autotune.engine.runner import preprocess_spec_for

    assert preprocess_spec_for(tiny_model) == model_facts(tiny_model).preprocess


# ------------------------------------------------------------------------------------------ worker imports

# What a consumer does to get ready (thread setup, backend build, a first batch), in a fresh interpreter;
# prints which heavy packages that pulled in.
_CHILD = r"""
import json, sys
from pathlib import Path
from autotune.engine.consumer import _set_threads
from autotune.models.backends import BackendSpec, build_backend
spec = BackendSpec(model_id=sys.argv[1], backend=sys.argv[2], threads=1)
_set_threads(1, need_torch=spec.needs_torch)
import numpy as np
backend = build_backend(spec, cache_root=Path(sys.argv[3]))
backend.embed(np.zeros((2, 224, 224, 3), np.uint8))
worker = {"hit": backend.cache_hit, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}
from autotune.engine.runner import preprocess_spec_for
preprocess_spec_for(sys.argv[1])  # what the scan's parent asks before it starts the workers
print(json.dumps({**worker, "parent_transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize("name", ["eager", "int8", "onnx-int8", "openvino-bf16"])
def test_cached_replica_imports_no_transformers(name: str, tiny_model: str, tmp_path: Path) -> None:
    """With its artefact and the facts cached, a replica never imports transformers; ONNX Runtime and
    OpenVINO replicas do not import torch either (their start-up is seconds shorter)."""
    reason = backend_unavailable(name)
    if reason:
        pytest.skip(reason)
    build_backend(BackendSpec(model_id=tiny_model, backend=name, threads=1), cache_root=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, tiny_model, name, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hit"] is (name != "eager")  # eager has no artefact to find
    assert result["transformers"] is False and result["parent_transformers"] is False
    assert result["torch"] is (name in ("eager", "int8"))


def test_needs_torch_follows_the_backend() -> None:
    """Only ONNX Runtime / OpenVINO CPU replicas (and the fake one) run without torch."""
    assert BackendSpec(model_id="m", backend="eager").needs_torch
    assert BackendSpec(model_id="m", backend="int8").needs_torch
    assert not BackendSpec(model_id="m", backend="onnx-int8").needs_torch
    assert not BackendSpec(model_id="m", backend="openvino-bf16").needs_torch
    assert not BackendSpec(model_id="fake:8").needs_torch
    assert BackendSpec(model_id="m", device="cuda:0", backend="eager").needs_torch


def test_exported_replica_uses_the_given_threads(tiny_model: str, tmp_path: Path) -> None:
    """An ONNX Runtime replica takes its thread count from the spec, and reports it."""
    if backend_unavailable("onnx"):
        pytest.skip("onnxruntime not installed")
    backend = build_backend(BackendSpec(model_id=tiny_model, backend="onnx", threads=1), cache_root=tmp_path)
    assert backend.info()["intra_op_threads"] == 1
    emb = backend.embed(np.zeros((2, 224, 224, 3), np.uint8))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


_PROBES = """
import json, sys
from autotune.machine import detect_machine
from autotune.tuner.profile import model_arch
machine = detect_machine()
print(json.dumps({"arch": model_arch(sys.argv[1]), "machine_id": machine.machine_id,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_a_studys_probes_of_model_and_machine_import_neither_torch_nor_transformers(tiny_model: str) -> None:
    """Every study and retrieval asks for the model's architecture and the machine: with the model's facts
    cached (and, here, no GPU), neither import costs its seconds; the answers are the ones torch and
    transformers give."""
    from transformers import CLIPConfig

    from autotune.machine import _GPU_DRIVER_PATHS, detect_machine
    from autotune.models.facts import model_facts
    from autotune.models.loading import arch_summary

    facts = model_facts(tiny_model)  # computes and caches the facts, as the first scan of a model does
    proc = subprocess.run([sys.executable, "-c", _PROBES, tiny_model], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["arch"] == arch_summary(CLIPConfig.from_pretrained(str(facts.path)))
    assert result["machine_id"] == detect_machine().machine_id  # this process has torch: the same answer
    assert result["transformers"] is False
    # Where a GPU driver is present, torch is still asked for the GPUs.
    assert result["torch"] is any(os.path.exists(p) for p in _GPU_DRIVER_PATHS)
