"""Tests of the offline stand-in models: configs, one-time atomic build, concurrent builds, markers."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autotune.errors import ModelError
from autotune.models.synthetic import (
    MARKER_FILE,
    SYNTHETIC_PREFIX,
    _publish,
    build_synthetic,
    is_synthetic,
    synthetic_config,
    variants,
)

EXPECTED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    MARKER_FILE,
)


def test_variants_and_unknown() -> None:
    """Both variants exist; an unknown one is a ModelError naming them."""
    assert set(variants()) == {"clip-vit-base-patch32", "tiny"}
    with pytest.raises(ModelError, match="synthetic:tiny"):
        build_synthetic("nope")


def test_vit_b32_config_matches_openai() -> None:
    """The ViT-B/32 stand-in config has exactly openai/clip-vit-base-patch32's architecture."""
    cfg = synthetic_config("clip-vit-base-patch32")
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (768, 12, 12)
    assert v.intermediate_size == 3072
    assert (v.patch_size, v.image_size, v.hidden_act) == (32, 224, "quick_gelu")
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (512, 12, 8)
    assert t.intermediate_size == 2048
    assert (t.max_position_embeddings, t.vocab_size, t.hidden_act) == (77, 49408, "quick_gelu")
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (49406, 49407, 1)
    assert cfg.projection_dim == 512
    assert cfg.logit_scale_init_value == pytest.approx(2.6592)


def test_tiny_keeps_structure() -> None:
    """The tiny variant keeps the input geometry and vocabulary, at tiny widths."""
    cfg = synthetic_config("tiny")
    assert (cfg.vision_config.patch_size, cfg.vision_config.image_size) == (32, 224)
    assert (cfg.text_config.vocab_size, cfg.text_config.max_position_embeddings) == (49408, 77)
    assert cfg.vision_config.hidden_size <= 128 and cfg.projection_dim <= 64


def test_build_once_and_reuse(tiny_model: str) -> None:
    """The folder is complete, marked, inside the cache, and a second call does not rewrite it."""
    path = build_synthetic("tiny")
    assert path.name == "synthetic-tiny-seed0"
    assert path.parent == Path(os.environ["AUTOTUNE_CACHE"]) / "models"
    for name in EXPECTED_FILES:
        assert (path / name).is_file(), name
    marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    assert marker == {"variant": "tiny", "seed": 0, "note": "random weights: rankings are meaningless"}
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert build_synthetic("tiny") == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    # No temporary siblings are left behind.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_processor_settings_match_openai(tiny_model: str) -> None:
    """The saved image processor has the real model's preprocessing."""
    cfg = json.loads((build_synthetic("tiny") / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert cfg["size"] == {"shortest_edge": 224}
    assert cfg["crop_size"] == {"height": 224, "width": 224}
    assert cfg["resample"] == 3  # bicubic
    assert cfg["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert cfg["image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_seeds_differ_and_incomplete_folder_is_rebuilt(tiny_model: str) -> None:
    """Another seed is another folder with other weights; a crashed (incomplete) folder is replaced."""
    a = build_synthetic("tiny", seed=0)
    b = build_synthetic("tiny", seed=3)
    assert b.name == "synthetic-tiny-seed3"
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    (b / MARKER_FILE).unlink()  # as if a non-atomic writer had died mid-way
    assert build_synthetic("tiny", seed=3) == b
    assert (b / MARKER_FILE).is_file()


def test_concurrent_builds_do_not_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builders racing for the same stand-in all get the same complete, loadable folder, and no debris."""
    from safetensors.torch import load_file

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: build_synthetic("tiny", seed=7), range(3)))
    assert paths[0] == paths[1] == paths[2] == tmp_path / "models" / "synthetic-tiny-seed7"
    for name in EXPECTED_FILES:
        assert (paths[0] / name).is_file(), name
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["synthetic-tiny-seed7"]
    assert load_file(paths[0] / "model.safetensors")  # readable, not truncated


def _fake_build(folder: Path, tag: str) -> Path:
    """A complete-looking build folder whose config records ``tag``."""
    folder.mkdir(parents=True)
    for name in EXPECTED_FILES:
        (folder / name).write_text(tag)
    return folder


def test_publish_loser_keeps_winner(tmp_path: Path) -> None:
    """A build finishing second leaves the first (complete) one in place and does not fail."""
    final = _fake_build(tmp_path / "final", "winner")
    loser = _fake_build(tmp_path / ".final.tmp-1", "loser")
    _publish(loser, final)
    assert (final / "config.json").read_text() == "winner"


def test_publish_replaces_empty_or_incomplete_folder(tmp_path: Path) -> None:
    """An empty placeholder folder (e.g. made by cache_dir) or a crashed build is replaced by the new one."""
    empty = tmp_path / "empty"
    empty.mkdir()
    _publish(_fake_build(tmp_path / ".t1", "new"), empty)
    assert (empty / "config.json").read_text() == "new"
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "config.json").write_text("old")
    _publish(_fake_build(tmp_path / ".t2", "new"), crashed)
    assert (crashed / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crashed", "empty"]


def test_is_synthetic(tiny_model: str, tmp_path: Path) -> None:
    """Ids with the prefix and folders with the marker are stand-ins; hub ids and plain folders are not."""
    assert is_synthetic(SYNTHETIC_PREFIX + "tiny")
    assert is_synthetic(build_synthetic("tiny"))
    assert is_synthetic(str(build_synthetic("tiny")))
    assert not is_synthetic("openai/clip-vit-base-patch32")
    assert not is_synthetic(tmp_path)
