"""Tests of make-model's training: determinism, the saved checkpoint, refusals, the loss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from autotune.errors import AutotuneError, DataError
from autotune.models import encode_texts, image_tower, load_clip
from autotune.models.train import MARKER_NAME, TEMPLATES, label_aware_loss, train_model
from autotune.preprocess import PreprocessSpec

# A few steps on small batches: enough to move every weight, cheap enough to run three times.
STEPS = 3
BATCH = 8


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved checkpoint."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Three tiny trainings on the 48-image corpus: seed 0 twice, seed 1 once."""
    base = tmp_path_factory.mktemp("train")
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = base / name
        summary = train_model(small_dataset, folder, seed=seed, steps=STEPS, batch_size=BATCH)
        out[name] = (folder, summary)
    return out


def test_same_seed_same_weights(runs: dict[str, tuple[Path, dict]]) -> None:
    """Same seed, data and steps give identical weights; another seed gives different ones."""
    a, b, c = (_weights(runs[k][0]) for k in "abc")
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[name], c[name]) for name in a)
    assert runs["a"][1]["final_loss"] == runs["b"][1]["final_loss"]


def test_training_moves_the_weights(runs: dict[str, tuple[Path, dict]], tmp_path: Path, small_dataset: Path) -> None:
    """The saved weights are trained ones, not the initialisation (one step already changes them)."""
    from transformers import CLIPModel

    from autotune.models.tokenizer import build_offline_tokenizer
    from autotune.models.train import trained_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = CLIPModel(trained_config(build_offline_tokenizer(tmp_path / "tok"))).state_dict()
    trained = _weights(runs["a"][0])
    name = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(initial[name], trained[name])


def test_summary_and_marker(runs: dict[str, tuple[Path, dict]], small_dataset: Path) -> None:
    """The returned figures and autotune_trained.json describe the run."""
    from autotune.data import LABELS, open_source

    folder, summary = runs["a"]
    assert set(summary) >= {"out", "steps", "seconds", "final_loss", "images", "labels", "stopped_early"}
    assert summary["out"] == str(folder)
    assert summary["steps"] == STEPS and summary["stopped_early"] is False
    assert summary["images"] == 48 and summary["labels"] == len(LABELS)
    assert summary["final_loss"] > 0
    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["dataset_fingerprint"] == open_source(small_dataset).fingerprint()
    assert marker["labels"] == LABELS
    assert marker["seed"] == 0 and marker["steps"] == STEPS
    assert marker["final_loss"] == summary["final_loss"]
    assert marker["templates"] == list(TEMPLATES) and "a photo of {label}" in marker["templates"]
    assert isinstance(marker["seconds"], float)


def test_saved_folder_loads_like_any_clip(runs: dict[str, tuple[Path, dict]]) -> None:
    """load_clip reads the folder as a plain (non-synthetic) CLIP: processor, tokenizer, both towers."""
    folder = runs["a"][0]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "vocab.json"):
        assert (folder / name).is_file(), name
    loaded = load_clip(str(folder))
    assert loaded.synthetic is False
    assert loaded.embed_dim == 128 and loaded.image_size == 224
    assert loaded.arch == "vit-128x4-p32-224/proj128"
    config: Any = loaded.model.config
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.num_hidden_layers == 4
    assert config.vision_config.hidden_act == "quick_gelu" and config.text_config.eos_token_id == 49407
    # The scan reads its preprocessing off this processor: it must be the one training used.
    assert PreprocessSpec.from_processor(loaded.processor) == PreprocessSpec()
    ids = loaded.processor.tokenizer("a photo of Felis catus")["input_ids"]
    assert ids[0] == 49406 and ids[-1] == 49407
    texts = encode_texts(loaded, ["a photo of Felis catus", "a photo of Luna craterosa"])
    assert texts.shape == (2, 128)
    assert torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    images = image_tower(loaded)(torch.zeros(2, 3, 224, 224))
    assert images.shape == (2, 128)


def test_refuses_non_empty_out(small_dataset: Path, tmp_path: Path) -> None:
    """An existing non-empty folder (or a file) is never overwritten; an empty folder is fine."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder") as info:
        train_model(small_dataset, out, steps=1, batch_size=BATCH)
    assert "\n" not in str(info.value)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(DataError):
        train_model(small_dataset, file_out, steps=1, batch_size=BATCH)
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = train_model(small_dataset, empty, steps=1, batch_size=BATCH, minutes=10)
    assert summary["steps"] == 1 and (empty / "model.safetensors").is_file()
    # No temporary folders left beside the model.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "model"]


def test_refuses_unlabelled_dataset(small_dataset: Path, tmp_path: Path) -> None:
    """Images without a label folder cannot be trained on: one-line DataError, nothing written."""
    data = tmp_path / "flat"
    data.mkdir()
    for src in sorted(small_dataset.rglob("*.jpg"))[:3]:
        shutil.copy(src, data / src.name)
    with pytest.raises(DataError, match="no labelled images"):
        train_model(data, tmp_path / "out", steps=1)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(small_dataset: Path, tmp_path: Path) -> None:
    """Zero steps, a non-positive cap, batch size or thread count are refused before any work."""
    for kwargs in ({"steps": 0}, {"minutes": 0}, {"batch_size": 0}, {"threads": 0}):
        with pytest.raises(AutotuneError):
            train_model(small_dataset, tmp_path / "out", **kwargs)  # type: ignore[arg-type]


class _Recorder:
    """A progress factory that records each task's description and total, its advances and status lines."""

    def __init__(self) -> None:
        """No task yet."""
        self.tasks: list[tuple[str, int]] = []
        self.advanced: dict[str, int] = {}
        self.infos: list[str] = []
        self.closed = 0

    def __call__(self, description: str, total: int) -> _Recorder:
        """Start a task (this recorder is its own task; advances count against the latest one)."""
        self.tasks.append((description, total))
        self.advanced[description] = 0
        return self

    def advance(self, k: int = 1, info: str = "") -> None:
        """Count ``k`` more units of the latest task."""
        self.advanced[self.tasks[-1][0]] += k
        if info:
            self.infos.append(info)

    def update(self, completed: int, info: str = "") -> None:
        """Set the latest task's count."""
        self.advanced[self.tasks[-1][0]] = completed

    def close(self) -> None:
        """Count the closing."""
        self.closed += 1


def test_progress_reports_preprocessing_and_steps(small_dataset: Path, tmp_path: Path) -> None:
    """A preprocess task over every image, then a make-model task advanced once per step with its loss."""
    recorder = _Recorder()
    summary = train_model(small_dataset, tmp_path / "m", steps=2, batch_size=BATCH, progress=recorder)
    images = summary["images"] + summary["skipped"]
    assert recorder.tasks == [("preprocess", images), ("make-model", 2)]
    assert recorder.advanced == {"preprocess": images, "make-model": 2}
    assert recorder.closed == 2 and len(recorder.infos) == 2 and recorder.infos[0].startswith("loss ")


def test_minutes_cap_stops_early(small_dataset: Path, tmp_path: Path) -> None:
    """A wall-clock cap that expires stops after the current step and says so."""
    summary = train_model(small_dataset, tmp_path / "m", steps=50, batch_size=BATCH, minutes=1e-6)
    assert summary["stopped_early"] is True and summary["steps"] == 1
    assert json.loads((tmp_path / "m" / MARKER_NAME).read_text())["steps"] == 1


def test_label_aware_loss_keeps_same_label_together() -> None:
    """Duplicates of a label in a batch are positives: the gradient never lowers a same-label score."""
    image_labels = torch.tensor([0, 0, 1, 2, 2, 2])
    caption_labels = torch.tensor([0, 1, 2, 2])  # label 2 with two templates
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(6, 4, generator=generator)).requires_grad_()
    label_aware_loss(logits, image_labels, caption_labels).backward()
    assert logits.grad is not None
    same = image_labels[:, None] == caption_labels[None, :]
    assert (logits.grad[same] <= 1e-7).all()  # raising a positive's score never increases the loss
    assert (logits.grad[~same] >= -1e-7).all()  # raising a negative's score never decreases it
    # Aligned embeddings reach the optimum; swapped ones are far from it.
    aligned = torch.where(same, 10.0, -10.0)
    assert float(label_aware_loss(aligned, image_labels, caption_labels)) < 1e-3
    assert float(label_aware_loss(-aligned, image_labels, caption_labels)) > 5
