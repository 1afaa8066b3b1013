"""Image databases: folder and Hugging Face dataset sources, plus synthetic corpora for tests and benches."""

from __future__ import annotations

from autotune.data.folder import IMAGE_EXTENSIONS, FolderSource
from autotune.data.generate import LABELS, SOURCE_PHOTOS, make_dataset, write_bad_images
from autotune.data.hf import HFDatasetSource
from autotune.data.records import ImageSource, Record
from autotune.data.repeated import RepeatedSource
from autotune.data.sources import dataset_fingerprint, open_source

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABELS",
    "SOURCE_PHOTOS",
    "FolderSource",
    "HFDatasetSource",
    "ImageSource",
    "Record",
    "RepeatedSource",
    "dataset_fingerprint",
    "make_dataset",
    "open_source",
    "write_bad_images",
]
