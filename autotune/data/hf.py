"""A Hugging Face dataset as an image database: ``save_to_disk`` folders, parquet files, imagefolders, hub ids."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from autotune.data.records import ImageSource, Record, digest
from autotune.data.splits import Parts, positions, select_splits, split_counts
from autotune.errors import DataError, one_line

if TYPE_CHECKING:  # datasets takes a second to import: only handlers that need it pay for it
    import datasets
    from PIL import Image

#: Files that mark a ``save_to_disk`` folder.
SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
#: What a hub dataset id looks like (``owner/name``).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LABEL_COLUMNS = ("label", "labels")


@contextlib.contextmanager
def quiet_datasets() -> Iterator[ModuleType]:
    """Import ``datasets`` with its progress bars and info logs silenced for the duration."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()



def _png_bytes(image: Image.Image) -> bytes:
    """Encode a decoded PIL image losslessly as PNG."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except OSError:  # modes PNG cannot store (CMYK, F...): the closest lossless-enough mode
        buffer = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class HFDatasetSource(ImageSource):
    """A Hugging Face dataset: a ``save_to_disk`` folder, parquet files, an imagefolder, or a hub id.

    ``mode`` is ``"disk"``, ``"parquet"``, ``"imagefolder"`` or ``"hub"`` (detected from ``path`` when
    omitted). A ``DatasetDict`` contributes its ``split`` (default: ``"train"`` if present, else the first).
    The image column is ``image_column`` or the first column whose feature is ``datasets.Image``; it is read
    undecoded, so :meth:`read_bytes` returns the stored file bytes. Labels come from a ``label``/``labels``
    ClassLabel column (its names) or a string column of that name.

    The dataset is opened (and validated) at construction, then reopened lazily in each worker process.

    Example:
        >>> src = HFDatasetSource("my_dataset_saved_to_disk")  # doctest: +SKIP
        >>> src.describe()  # doctest: +SKIP
        "hf dataset my_dataset_saved_to_disk (disk, split train, column 'image'): 48 images, 17 labels"
    """

    kind = "hf"
    _TRANSIENT = (*ImageSource._TRANSIENT, "_dataset", "_images")

    def __init__(
        self,
        path: str | Path,
        image_column: str | None = None,
        *,
        mode: str | None = None,
        split: str | None = None,
    ) -> None:
        """Open the dataset, pick the split and the image column; raise :class:`DataError` if unusable."""
        local = Path(path).expanduser()
        if mode is None:
            mode = detect_mode(local)
        if mode not in ("disk", "parquet", "imagefolder", "hub"):
            raise DataError(f"unknown Hugging Face dataset mode {mode!r}")
        super().__init__(local if mode == "hub" else local.resolve())
        self.hub_id: str | None = str(path) if mode == "hub" else None
        self.mode = mode
        self.split = split
        #: (split name, first row, end row) of each scanned span; "index" for a dataset without splits.
        self.parts: Parts = []
        self.image_column = image_column
        self.label_column: str | None = None
        self._dataset: datasets.Dataset | None = None
        self._images: datasets.Dataset | None = None
        self._resolve(self._open())

    # -------------------------------------------------------------------------------------- opening

    def _name(self) -> str:
        """How the dataset is named in messages."""
        return self.hub_id or str(self.path)

    def _parquet_files(self) -> list[str]:
        """All parquet files of a parquet dataset, sorted (a single file is its own list)."""
        if self.path.is_file():
            return [str(self.path)]
        return sorted(str(p) for p in self.path.rglob("*.parquet") if not is_hidden(p, self.path))

    def _open(self) -> datasets.Dataset:
        """Load the dataset (this process's handle) and select the split."""
        with quiet_datasets() as ds_lib:
            try:
                if self.mode == "disk":
                    loaded = ds_lib.load_from_disk(str(self.path))
                elif self.mode == "parquet":
                    loaded = ds_lib.load_dataset("parquet", data_files=self._parquet_files())
                elif self.mode == "imagefolder":
                    loaded = ds_lib.load_dataset("imagefolder", data_dir=str(self.path))
                else:
                    loaded = ds_lib.load_dataset(self.hub_id)
            except Exception as exc:  # datasets raises many types; the user needs one line
                if self.mode == "hub":
                    raise DataError(
                        f"no such path {self.hub_id}, and loading it as a Hugging Face hub dataset failed "
                        f"({one_line(exc, typed=True)})"
                    ) from exc
                raise DataError(f"cannot read dataset {self._name()}: {one_line(exc, typed=True)}") from exc
            if isinstance(loaded, ds_lib.DatasetDict):
                loaded, self.split, self.parts = select_splits(ds_lib, loaded, self.split, self._name())
            else:
                if self.split is not None:
                    raise DataError(f"dataset {self._name()} has no splits, so --split {self.split!r} cannot apply")
                self.parts = [("index", 0, len(loaded))]
        self._dataset = loaded
        return loaded

    def split_counts(self) -> dict[str, int]:
        """Images per split scanned (``{"index": n}`` for a dataset without splits)."""
        return split_counts(self.parts)

    def _resolve(self, dataset: datasets.Dataset) -> None:
        """Pick and check the image and label columns."""
        import datasets as ds_lib

        features = dataset.features
        columns = ", ".join(dataset.column_names) or "none"
        if self.image_column is None:
            found = [name for name, f in features.items() if isinstance(f, ds_lib.Image)]
            if not found:
                raise DataError(f"no image column in dataset {self._name()} (columns: {columns}); pass --image-column")
            self.image_column = found[0]
        elif self.image_column not in features:
            raise DataError(f"no column {self.image_column!r} in dataset {self._name()} (columns: {columns})")
        if len(dataset) == 0:
            raise DataError(f"dataset {self._name()} has no rows")
        feature = features[self.image_column]
        if not isinstance(feature, ds_lib.Image):
            kind = getattr(feature, "dtype", "")
            if kind not in ("binary", "large_binary", "string", "large_string"):
                raise DataError(
                    f"column {self.image_column!r} of dataset {self._name()} does not hold images ({feature})"
                )
            first = dataset[0][self.image_column]
            # Strings cast to images as file paths: any other text would only fail later, in a worker.
            if isinstance(first, str) and not (os.path.isfile(first) or "://" in first):
                raise DataError(
                    f"column {self.image_column!r} of dataset {self._name()} does not hold images "
                    f"(first value {first[:60]!r} is not an image file)"
                )
        self._image_view(dataset)  # fails now, not in a worker, if the column cannot hold images
        for name in _LABEL_COLUMNS:
            feature = features.get(name)
            is_string = isinstance(feature, ds_lib.Value) and feature.dtype in ("string", "large_string")
            if isinstance(feature, ds_lib.ClassLabel) or is_string:
                self.label_column = name
                break

    def _handle(self) -> datasets.Dataset:
        """This process's dataset handle, opened on first use."""
        if self._dataset is None:
            if self._lock is None:
                self._lock = threading.RLock()
            with self._lock:
                if self._dataset is None:
                    self._open()
        assert self._dataset is not None
        return self._dataset

    def _image_view(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """The image column alone, cast to undecoded images ({"bytes", "path"})."""
        import datasets as ds_lib

        assert self.image_column is not None
        try:
            view = dataset.select_columns([self.image_column])
            return view.cast_column(self.image_column, ds_lib.Image(decode=False))
        except Exception as exc:
            feature = dataset.features[self.image_column]
            raise DataError(
                f"column {self.image_column!r} of dataset {self._name()} does not hold images ({feature}): "
                f"{one_line(exc, typed=True)}"
            ) from exc

    def _image_rows(self) -> datasets.Dataset:
        """Cached undecoded image view for this process."""
        if self._images is None:
            self._images = self._image_view(self._handle())
        return self._images

    # ----------------------------------------------------------------------------------- interface

    def _scan(self) -> tuple[list[Record], str]:
        """Rows as records (labels mapped to names) and the fingerprint."""
        dataset = self._handle()
        labels: list[str | None] = [None] * len(dataset)
        if self.label_column is not None:
            table = dataset.select_columns([self.label_column]).with_format("arrow")[:]
            values = table.column(self.label_column).to_pylist()
            feature = dataset.features[self.label_column]
            names = getattr(feature, "names", None)
            if names is not None:
                labels = [names[v] if v is not None and 0 <= v < len(names) else None for v in values]
            else:
                labels = [v if v else None for v in values]
        records: list[Record] = []
        for name, start, stop in self.parts:
            base = len(records)
            records += [Record(base + j, f"{name}:{start + j}", labels[base + j]) for j in range(stop - start)]
        return records, self._compute_fingerprint(dataset)

    def _compute_fingerprint(self, dataset: datasets.Dataset) -> str:
        """Hash what identifies the data: source files for parquet/imagefolder, the arrow files otherwise."""
        parts = [self.kind, self.mode, str(self.parts), str(self.image_column), str(len(dataset))]
        if self.mode == "parquet":
            files = [Path(f) for f in self._parquet_files()]
        elif self.mode == "imagefolder":
            files = sorted(p for p in self.path.rglob("*") if p.is_file() and not is_hidden(p, self.path))
        else:
            # The dataset's own fingerprint changes with every transform; the arrow files with the bytes.
            parts.append(str(getattr(dataset, "_fingerprint", "")))
            files = sorted(Path(f["filename"]) for f in dataset.cache_files)
        root = self.path if self.path.is_dir() else self.path.parent
        for file in files:
            st = file.stat()
            # Names relative to the dataset (as for folders): moving it, mtimes kept, keeps the hash.
            name = file.name if self.mode in ("disk", "hub") else file.relative_to(root).as_posix()
            parts.append(f"{name}|{st.st_size}|{st.st_mtime_ns}")
        return digest(iter(parts))

    def read_bytes(self, record: Record) -> bytes:
        """The image's stored bytes (re-encoded losslessly as PNG only if nothing but pixels is available)."""
        prefix, _, index = record.locator.rpartition(":")
        where = positions(self.parts).get(prefix)
        if where is None or not index.isdigit():
            raise ValueError(f"not a record locator of {self._name()}: {record.locator!r}")
        assert self.image_column is not None
        value = self._image_rows()[where[1] + int(index) - where[0]][self.image_column]
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return bytes(value["bytes"])
            path = value.get("path")
            if path and os.path.isfile(path):
                return Path(path).read_bytes()
            if not path:
                raise OSError(f"row {index} of {self._name()} has neither bytes nor a path")
            import datasets as ds_lib

            # Archive members and remote files: let datasets resolve them, at the price of a re-encode.
            return _png_bytes(ds_lib.Image().decode_example(value))
        if hasattr(value, "save"):  # a decoded PIL image
            return _png_bytes(value)
        raise OSError(f"row {index} of {self._name()}: unexpected image value of type {type(value).__name__}")

    def describe(self) -> str:
        """E.g. ``hf dataset /data/ds (disk, split train, column 'image'): 48 images, 17 labels``."""
        counts = self.split_counts()
        split = (
            ", splits " + " + ".join(f"{k} ({v})" for k, v in counts.items())
            if len(counts) > 1
            else (f", split {self.split}" if self.split else "")
        )
        return (
            f"hf dataset {self._name()} ({self.mode}{split}, column {self.image_column!r}): "
            f"{len(self)} images, {len(self.labels())} labels"
        )


def is_hidden(path: Path, root: Path) -> bool:
    """Whether any component of ``path`` below ``root`` starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def detect_mode(path: Path) -> str:
    """Which kind of Hugging Face dataset lives at ``path``."""
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return "parquet"
        raise DataError(f"not a dataset folder: {path}")
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVE_TO_DISK_MARKERS):
            return "disk"
        if any(path.glob("*.parquet")) or any(path.glob("data/**/*.parquet")):
            return "parquet"
        return "imagefolder"
    if HUB_ID.match(str(path)) and not str(path).startswith((".", "~")):
        return "hub"
    raise DataError(f"no such file or directory: {path}")
