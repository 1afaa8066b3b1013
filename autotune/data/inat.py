"""iNaturalist 2021 as distributed: a split folder of taxonomy-named class folders and its COCO-style JSON.

``train_mini/`` holds 10,000 folders named ``00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_
Lumbricus_terrestris``; ``train_mini.json`` beside it has ``images``, ``annotations`` and ``categories``
(each with ``name``, ``common_name`` and ``image_dir_name``). The label of an image is its species name
(``Lumbricus terrestris``), so prompts such as "a photo of Lumbricus terrestris" can be formed from it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from autotune.data.folder import FolderSource
from autotune.errors import DataError

#: ``<id>_<kingdom>_<phylum>_<class>_<order>_<family>_<Genus>_<epithet>``: the species is the last two parts.
TAXON_FOLDER = re.compile(r"^\d+_[A-Z][A-Za-z]*_[^_]+_[^_]+_[^_]+_[^_]+_([A-Z][^_]*)_([^_].*)$")
#: Split folders iNaturalist 2021 ships; a parent folder is searched for these and for ``<name>/`` + ``<name>.json``.
KNOWN_SPLITS = ("train", "train_mini", "val", "public_test")
_PROBE = 5  # class folders looked at to recognise the layout


def species_from_folder(name: str) -> str:
    """The species of a taxonomy-named folder (``Lumbricus terrestris``), or the name itself.

    Example:
        >>> species_from_folder("00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris")
        'Lumbricus terrestris'
    """
    found = TAXON_FOLDER.match(name)
    return f"{found[1]} {found[2].replace('_', ' ')}" if found else name


def annotations_for(split_dir: Path) -> Path | None:
    """The split's COCO-style JSON: ``<split>.json`` beside the folder (as distributed) or inside it."""
    for candidate in (split_dir.parent / f"{split_dir.name}.json", split_dir / f"{split_dir.name}.json"):
        if candidate.is_file():
            return candidate
    return None


def _taxon_named(split_dir: Path) -> bool:
    """Whether the first class folders of ``split_dir`` are taxonomy-named (a handful are looked at)."""
    try:
        with os.scandir(split_dir) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()][:_PROBE]
    except OSError:
        return False
    return bool(names) and all(TAXON_FOLDER.match(n) for n in names)


def is_split_folder(path: Path) -> bool:
    """Whether ``path`` is an iNaturalist split folder: taxonomy-named class folders, or its JSON is there."""
    return path.is_dir() and (_taxon_named(path) or annotations_for(path) is not None)


def _top_level_value(path: Path, key: str) -> Any:
    """One top-level value of a large JSON file, parsed alone (``categories`` of a 500,000-image file in
    milliseconds instead of parsing every image); the whole file is parsed if the quick way fails."""
    raw = path.read_bytes()
    at = raw.find(f'"{key}"'.encode())
    if at >= 0:
        colon = raw.find(b":", at + len(key) + 2)
        text = raw[colon + 1 :].decode("utf-8", "replace").lstrip()
        try:
            return json.JSONDecoder().raw_decode(text)[0]
        except ValueError:
            pass
    data = json.loads(raw)
    return data.get(key) if isinstance(data, dict) else None


def read_categories(path: Path) -> dict[str, tuple[str, str | None]]:
    """Class folder name -> (species name, common name) from a COCO-style JSON's ``categories``.

    Folders come from each category's ``image_dir_name``; a file without them is mapped through its images'
    ``file_name`` and ``annotations`` (the whole file is parsed then). Raises :class:`DataError` on a file that
    is not such a JSON.
    """
    try:
        categories = _top_level_value(path, "categories")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "name" in c for c in categories):
        raise DataError(f"{path} is not a COCO-style JSON: no list of categories with names")
    by_id = {c.get("id"): (str(c["name"]), c.get("common_name") or None) for c in categories}
    if all("image_dir_name" in c for c in categories):
        return {str(c["image_dir_name"]): by_id[c.get("id")] for c in categories}
    data = json.loads(path.read_bytes())
    image_dir = {i.get("id"): Path(str(i.get("file_name", ""))).parent.name for i in data.get("images", [])}
    out: dict[str, tuple[str, str | None]] = {}
    for ann in data.get("annotations", []):
        folder = image_dir.get(ann.get("image_id"))
        if folder and ann.get("category_id") in by_id:
            out.setdefault(folder, by_id[ann["category_id"]])
    return out


class INatSource(FolderSource):
    """An iNaturalist split folder: labels are species names, common names (from the JSON) a field apart.

    Images are listed, read and identified as in :class:`FolderSource` (locators ``<class folder>/<file>``).
    A class folder's label is its category's ``name`` in the split's JSON, else the species part of its
    taxonomy name, else the folder name.

    Example:
        >>> src = INatSource(Path("inat2021/train_mini"))  # doctest: +SKIP
        >>> src.records()[0].label, src.records()[0].common_name  # doctest: +SKIP
        ('Lumbricus terrestris', 'Common Earthworm')
    """

    kind = "inat"

    def __init__(self, path: str | Path, annotations: Path | None = None) -> None:
        """A split folder and its JSON (found beside or inside it when not given)."""
        super().__init__(path)
        self.annotations = annotations if annotations is not None else annotations_for(self.path)

    def _folder_labels(self, folders: set[str]) -> dict[str, tuple[str | None, None, str | None]]:
        """Species name (and common name, no caption) per class folder."""
        known = read_categories(self.annotations) if self.annotations else {}
        out: dict[str, tuple[str | None, None, str | None]] = {}
        for folder in folders:
            name, common = known.get(folder) or (species_from_folder(folder), None)
            out[folder] = (name, None, common)
        return out

    def describe(self) -> str:
        """E.g. ``inaturalist split /data/train_mini (train_mini.json): 500000 images, 10000 labels``."""
        note = f" ({self.annotations.name})" if self.annotations else ""
        return f"inaturalist split {self.path}{note}: {len(self)} images, {len(self.labels())} labels"


def open_inat(path: Path, split: str | None) -> INatSource | None:
    """The iNaturalist split at ``path`` (a split folder, or its parent with ``split`` choosing), else None.

    In a parent, the default split is ``train`` if present, else ``train_mini``, else the first by name.
    """
    if is_split_folder(path):
        if split is not None and split != path.name:
            raise DataError(f"{path} is the iNaturalist split {path.name!r}: --split {split!r} cannot apply")
        return INatSource(path)
    if not path.is_dir():
        return None
    with os.scandir(path) as entries:
        names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    splits = [n for n in names if (n in KNOWN_SPLITS or (path / f"{n}.json").is_file()) and is_split_folder(path / n)]
    if not splits:
        return None
    chosen = split or next((s for s in ("train", "train_mini") if s in splits), splits[0])
    if chosen not in splits:
        raise DataError(f"no iNaturalist split {chosen!r} in {path} (splits: {', '.join(splits)})")
    return INatSource(path / chosen)
