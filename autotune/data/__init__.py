"""Image databases: folder, WebDataset shard, iNaturalist and Hugging Face dataset sources, plus synthetic
corpora (in each of those shapes) for tests and benches."""

from __future__ import annotations

from autotune.data.folder import IMAGE_EXTENSIONS, FolderSource
from autotune.data.generate import FORMATS, LABELS, SOURCE_PHOTOS, make_dataset, write_bad_images
from autotune.data.hf import HFDatasetSource
from autotune.data.inat import INatSource
from autotune.data.records import ImageSource, Record
from autotune.data.repeated import RepeatedSource
from autotune.data.shards import WebDatasetSource
from autotune.data.sources import dataset_fingerprint, open_source

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "LABELS",
    "SOURCE_PHOTOS",
    "FolderSource",
    "HFDatasetSource",
    "INatSource",
    "ImageSource",
    "Record",
    "RepeatedSource",
    "WebDatasetSource",
    "dataset_fingerprint",
    "make_dataset",
    "open_source",
    "write_bad_images",
]
