"""The generated corpus in the shapes people hold image sets in: WebDataset shards, iNaturalist's own layout,
and a Hugging Face ``save_to_disk`` dataset. Each writer takes the corpus as files (``<label>/<index>.jpg``)
and keeps every image's bytes unchanged, so the shapes rank the same images the same way."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

QUERY_TEMPLATE = "a photo of {label}"
#: Taxonomy of the generated labels (kingdom, phylum, class, order, family) and a common name; the four real
#: species have their real ranks, the made-up ones made-up ranks.
TAXONOMY: dict[str, tuple[str, str, str, str, str, str]] = {
    "Coffea arabica": ("Plantae", "Tracheophyta", "Magnoliopsida", "Gentianales", "Rubiaceae", "Arabica Coffee"),
    "Felis catus": ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Domestic Cat"),
    "Homo sapiens": ("Animalia", "Chordata", "Mammalia", "Primates", "Hominidae", "Human"),
    "Poa pratensis": ("Plantae", "Tracheophyta", "Liliopsida", "Poales", "Poaceae", "Kentucky Bluegrass"),
}


def _taxonomy(label: str) -> tuple[str, str, str, str, str, str]:
    """Ranks and common name of a generated label (made up for the made-up species)."""
    genus = label.split()[0]
    common = label.split()[1].capitalize() + " " + genus.lower()
    return TAXONOMY.get(label, ("Artefacta", "Imaginaria", "Photographica", f"{genus}ales", f"{genus}idae", common))


def taxon_folder(number: int, label: str) -> str:
    """iNaturalist's folder name for a label: ``00003_Animalia_Chordata_Mammalia_Carnivora_Felidae_Felis_catus``."""
    ranks = _taxonomy(label)[:5]
    return "_".join([f"{number:05d}", *ranks, *label.split()])


def _files(corpus: Path) -> list[Path]:
    """The corpus's images in index order (their names are the image indices)."""
    return sorted(corpus.glob("*/*.jpg"), key=lambda p: p.name)


def write_shards(corpus: Path, out: Path, shard_images: int = 1000) -> dict[str, Any]:
    """Pack the corpus into ``out/{00000..}.tar``: per image ``<index>.jpg``, ``.json`` (label, caption), ``.txt``.

    Members are in index order, ``shard_images`` images per shard, as img2dataset lays them out.
    """
    files = _files(corpus)
    shards = 0
    for start in range(0, len(files), shard_images):
        with tarfile.open(out / f"{shards:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for path in files[start : start + shard_images]:
                label = path.parent.name
                caption = QUERY_TEMPLATE.format(label=label)
                sidecar = json.dumps({"key": path.stem, "label": label, "caption": caption}).encode()
                for name, data in ((f"{path.stem}.jpg", path.read_bytes()), (f"{path.stem}.json", sidecar),
                                   (f"{path.stem}.txt", caption.encode())):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        shards += 1
    return {"shards": shards, "shard_images": shard_images}


def write_inat(corpus: Path, labels: list[str]) -> dict[str, Any]:
    """Turn the corpus folder into an iNaturalist split in place: taxonomy-named class folders and
    ``<folder name>.json`` (COCO-style images, annotations and categories) inside it."""
    categories: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, int]] = []
    for number, label in enumerate(labels):
        folder = taxon_folder(number, label)
        (corpus / label).rename(corpus / folder)
        kingdom, phylum, klass, order, family, common = _taxonomy(label)
        genus, epithet = label.split(maxsplit=1)
        categories.append({
            "id": number, "name": label, "common_name": common, "supercategory": kingdom, "kingdom": kingdom,
            "phylum": phylum, "class": klass, "order": order, "family": family, "genus": genus,
            "specific_epithet": epithet, "image_dir_name": folder,
        })  # fmt: skip
        for path in sorted((corpus / folder).glob("*.jpg")):
            with Image.open(path) as im:
                width, height = im.size
            image_id = int(path.stem)
            images.append({"id": image_id, "file_name": f"{corpus.name}/{folder}/{path.name}", "width": width,
                           "height": height})  # fmt: skip
            annotations.append({"id": image_id, "image_id": image_id, "category_id": number})
    images.sort(key=lambda i: int(i["id"]))
    annotations.sort(key=lambda a: a["id"])
    doc = {"info": {"description": "autotune make-dataset --format inat"}, "images": images,
           "annotations": annotations, "categories": categories}  # fmt: skip
    (corpus / f"{corpus.name}.json").write_text(json.dumps(doc) + "\n", encoding="utf-8")
    return {"annotations": f"{corpus.name}.json"}


def write_hf_disk(corpus: Path, out: Path) -> dict[str, Any]:
    """Save the corpus as a Hugging Face ``save_to_disk`` dataset (image bytes embedded, a string label)."""
    import datasets

    from autotune.data.hf import quiet_datasets

    files = _files(corpus)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [f.parent.name for f in files]}, features=features
    )
    with quiet_datasets():
        table.save_to_disk(str(out))
    return {}

