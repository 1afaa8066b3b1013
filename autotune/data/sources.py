"""Open an image database by path: a folder of image files, WebDataset shards, an iNaturalist split, or a
Hugging Face dataset (detected from the path).

The sources themselves live in :mod:`autotune.data.records` (the interface), :mod:`autotune.data.folder`,
:mod:`autotune.data.shards`, :mod:`autotune.data.inat` and :mod:`autotune.data.hf`; their names are
re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

from pathlib import Path

from autotune.data.folder import IMAGE_EXTENSIONS, FolderSource
from autotune.data.hf import HUB_ID, SAVE_TO_DISK_MARKERS, HFDatasetSource, detect_mode, is_hidden
from autotune.data.inat import INatSource, open_inat
from autotune.data.records import ImageSource, Record
from autotune.data.shards import WebDatasetSource, is_shard_name, is_shard_pattern, shard_files_in
from autotune.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderSource",
    "HFDatasetSource",
    "INatSource",
    "ImageSource",
    "Record",
    "WebDatasetSource",
    "dataset_fingerprint",
    "open_source",
]


def open_source(path: str | Path, image_column: str | None = None, split: str | None = None) -> ImageSource:
    """Open an image database: a folder of images, WebDataset shards, an iNaturalist split or a Hugging Face
    dataset, detected from ``path``.

    A brace pattern (``shards/{00000..00999}.tar``), a ``.tar`` file, or a folder holding ``.tar`` files and no
    images at its top level is a :class:`WebDatasetSource`, read in place. A folder of taxonomy-named class
    folders (``00000_Animalia_..._Lumbricus_terrestris``) or with its COCO-style ``<name>.json`` beside or in it
    is an :class:`INatSource` (also when ``path`` is the parent of such split folders; ``split`` chooses one).
    A folder with ``dataset_info.json``/``state.json``/``dataset_dict.json`` (``save_to_disk``) or parquet
    files is a :class:`HFDatasetSource`; any other folder is a :class:`FolderSource` (an imagefolder gives the
    same records that way), unless ``image_column`` is given, which opens it as a Hugging Face imagefolder.
    A path that does not exist but looks like ``owner/name`` is loaded from the hub (or its cache).
    ``split`` selects Hugging Face splits in their syntax (``train+validation``; default ``train``, else the
    first split); a folder of images has no splits.
    Every failure is a :class:`DataError` with a one-line message; the listing is taken now, so an empty
    folder fails here.

    Example:
        >>> src = open_source("photos")  # doctest: +SKIP
        >>> src.kind, len(src), src.fingerprint()  # doctest: +SKIP
        ('folder', 48, '3f1c0d9a2b7e4c55')
    """
    local = Path(path).expanduser()
    if is_shard_pattern(str(path)):
        return _shards(WebDatasetSource(path), split)
    if not local.exists():
        if HUB_ID.match(str(path)) and not str(path).startswith((".", "~", "/")):
            return HFDatasetSource(str(path), image_column, mode="hub", split=split)
        raise DataError(f"no such file or directory: {local}")
    if local.is_file():
        if local.suffix.lower() == ".parquet":
            return HFDatasetSource(local, image_column, mode="parquet", split=split)
        if is_shard_name(local.name):
            return _shards(WebDatasetSource(local), split)
        raise DataError(f"{local} is a file: expected a folder of images, shards or a dataset folder")
    if image_column is None and _holds_shards(local):
        return _shards(WebDatasetSource(local), split)
    inat = open_inat(local, split) if image_column is None else None
    if inat is not None:
        return inat
    mode = detect_mode(local)
    if mode != "imagefolder":
        return HFDatasetSource(local, image_column, mode=mode, split=split)
    if image_column is not None or split is not None:
        return HFDatasetSource(local, image_column, mode="imagefolder", split=split)
    source = FolderSource(local)
    try:
        source.records()
    except DataError:
        # No images at all, but parquet shards deeper down (e.g. a hub snapshot's <config>/<split>/ layout).
        if any(p for p in local.rglob("*.parquet") if not is_hidden(p, local)):
            return HFDatasetSource(local, image_column, mode="parquet", split=split)
        raise
    return source


def _holds_shards(folder: Path) -> bool:
    """Whether ``folder`` holds ``.tar`` shards and no image files at its top level (img2dataset's output)."""
    if not shard_files_in(folder) or any((folder / m).is_file() for m in SAVE_TO_DISK_MARKERS):
        return False
    return not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def _shards(source: WebDatasetSource, split: str | None) -> WebDatasetSource:
    """``source``, listed now (shards without images fail here); shards have no splits, so --split is refused."""
    if split is not None:
        raise DataError(f"{source.path} is WebDataset shards: they have no splits, so --split {split!r} cannot apply")
    source.records()
    return source


def dataset_fingerprint(path: str | Path, image_column: str | None = None, split: str | None = None) -> str:
    """Fingerprint of the database at ``path`` (see :meth:`ImageSource.fingerprint`).

    Example:
        >>> dataset_fingerprint("photos")  # doctest: +SKIP
        '3f1c0d9a2b7e4c55'
    """
    return open_source(path, image_column, split).fingerprint()
