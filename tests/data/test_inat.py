"""iNaturalist 2021's own layout: species labels, common names, the split folder or its parent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autotune.data import LABELS, FolderSource, INatSource, make_dataset, open_source
from autotune.data.inat import read_categories, species_from_folder
from autotune.errors import DataError


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated iNaturalist split (34 images) with its JSON inside."""
    out = tmp_path_factory.mktemp("inat") / "train_mini"
    make_dataset(out, n=34, seed=5, format="inat")
    return out


def test_split_folder_labels_are_species(split: Path) -> None:
    """Labels are the JSON's species names; common names are a field apart; images as in a folder."""
    src = open_source(split)
    assert isinstance(src, INatSource) and isinstance(src, FolderSource)
    assert src.labels() == LABELS and len(src) == 34
    cat = next(r for r in src.records() if r.label == "Felis catus")
    assert cat.common_name == "Domestic Cat" and cat.locator.startswith("00001_Animalia_Chordata_Mammalia_")
    assert src.read_bytes(cat)[:2] == b"\xff\xd8"


def test_parent_folder_as_distributed(split: Path, tmp_path: Path) -> None:
    """The parent of ``train_mini/`` + ``train_mini.json`` (iNat's own layout) opens the split; --split chooses."""
    parent = tmp_path / "inat2021"
    shutil.copytree(split, parent / "train_mini")
    (parent / "train_mini" / "train_mini.json").rename(parent / "train_mini.json")
    shutil.copytree(parent / "train_mini", parent / "val")
    (parent / "val.json").write_bytes((parent / "train_mini.json").read_bytes())
    src = open_source(parent)
    assert isinstance(src, INatSource) and src.path == (parent / "train_mini").resolve()
    assert src.annotations == parent / "train_mini.json" and src.labels() == LABELS
    assert open_source(parent, split="val").path.name == "val"
    with pytest.raises(DataError, match="no iNaturalist split 'test'"):
        open_source(parent, split="test")
    with pytest.raises(DataError, match="cannot apply"):
        open_source(parent / "val", split="train_mini")


def test_taxonomy_folders_without_json(split: Path, tmp_path: Path) -> None:
    """Without the JSON the species is read from the folder name; no common names."""
    bare = tmp_path / "bare"
    shutil.copytree(split, bare, ignore=shutil.ignore_patterns("*.json"))
    src = open_source(bare)
    assert isinstance(src, INatSource) and src.labels() == LABELS
    assert all(r.common_name is None for r in src.records())
    name = "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"
    assert species_from_folder(name) == "Lumbricus terrestris"
    assert species_from_folder("Felis catus") == "Felis catus"


def test_json_without_folder_names_maps_through_images(split: Path, tmp_path: Path) -> None:
    """Categories lacking ``image_dir_name`` are mapped to folders through images and annotations."""
    doc = json.loads((split / "train_mini.json").read_text())
    for c in doc["categories"]:
        del c["image_dir_name"]
    path = tmp_path / "cats.json"
    path.write_text(json.dumps(doc))
    mapped = read_categories(path)
    assert mapped[next(iter(sorted(mapped)))] == ("Coffea arabica", "Arabica Coffee")


def test_bad_json_is_one_line(split: Path, tmp_path: Path) -> None:
    """A JSON beside the split that is not COCO-style is a one-line DataError."""
    bad = tmp_path / "train_mini"
    shutil.copytree(split, bad, ignore=shutil.ignore_patterns("*.json"))
    (bad / "train_mini.json").write_text('{"categories": 3}')
    with pytest.raises(DataError, match="not a COCO-style JSON") as info:
        open_source(bad).records()
    assert "\n" not in str(info.value)
