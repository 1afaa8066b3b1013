"""Image databases behind one interface: a folder of image files, or a Hugging Face dataset.

A source lists its images as :class:`Record` objects (stable integer ids, in sorted order) and hands out each
image's raw encoded bytes; decoding is the preprocessing's job. Sources are sent to spawned worker processes,
so their pickled state is only paths and options: listings and dataset handles are rebuilt lazily on the
other side.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import DataError, one_line

if TYPE_CHECKING:  # datasets takes a second to import: only handlers that need it pay for it
    import datasets

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LABEL_COLUMNS = ("label", "labels")


@dataclass(frozen=True, slots=True)
class Record:
    """One image of a source: ``id`` (its index in sorted order), ``locator`` and optional ``label``.

    ``locator`` is a path relative to the folder (:class:`FolderSource`) or ``"index:<n>"`` (a row of a
    Hugging Face dataset).

    Example:
        >>> Record(0, "Felis catus/0000001.jpg", "Felis catus").label
        'Felis catus'
    """

    id: int
    locator: str
    label: str | None


def _digest(parts: Iterator[str]) -> str:
    """16 hex characters summarising a stream of strings."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


class ImageSource(abc.ABC):
    """A database of images: records in a stable order, raw bytes per record, a content fingerprint.

    Subclasses implement :meth:`_scan` (records and fingerprint, computed together once so that they
    describe the same snapshot) and :meth:`read_bytes`.
    """

    kind: str = ""
    #: Attributes rebuilt lazily after unpickling, never sent to worker processes.
    _TRANSIENT: tuple[str, ...] = ("_records", "_fingerprint", "_lock", "_identities")

    def __init__(self, path: Path) -> None:
        """Remember the location; nothing is read yet."""
        self.path = path
        self._records: list[Record] | None = None
        self._fingerprint: str | None = None
        self._identities: list[str] | None = None
        self._lock: threading.RLock | None = threading.RLock()

    @abc.abstractmethod
    def _scan(self) -> tuple[list[Record], str]:
        """List the records and compute the fingerprint of the same snapshot of the data."""

    @abc.abstractmethod
    def read_bytes(self, record: Record) -> bytes:
        """Return the encoded bytes of one image (raises ``OSError`` when they cannot be read)."""

    def _ensure_scanned(self) -> None:
        """Run :meth:`_scan` once per process (thread-safe)."""
        if self._records is not None:
            return
        if self._lock is None:
            self._lock = threading.RLock()
        with self._lock:
            if self._records is None:
                records, fingerprint = self._scan()
                self._fingerprint = fingerprint
                self._records = records

    def records(self) -> list[Record]:
        """All images in a stable order; ``records()[i].id == i``. Computed once, then cached.

        Example:
            >>> [r.locator for r in open_source("photos").records()][:1]  # doctest: +SKIP
            ['Felis catus/0000001.jpg']
        """
        self._ensure_scanned()
        assert self._records is not None
        return self._records

    def __len__(self) -> int:
        """Number of images."""
        return len(self.records())

    def fingerprint(self) -> str:
        """16 hex characters that change when the data changes (taken with the listing, then cached).

        Example:
            >>> open_source("photos").fingerprint()  # doctest: +SKIP
            '3f1c0d9a2b7e4c55'
        """
        self._ensure_scanned()
        assert self._fingerprint is not None
        return self._fingerprint

    def identities(self) -> list[str]:
        """Per record, in :meth:`records` order, a short string that changes when that image's content does.

        The base implementation hashes each image's bytes (sources with no cheaper signal, such as Hugging
        Face datasets); folders use size and modification time. Computed once, then cached.

        Example:
            >>> open_source("photos").identities()[:1]  # doctest: +SKIP
            ['38211:1732780800000000000']
        """
        self._ensure_scanned()
        if self._identities is None:
            out = []
            for rec in self.records():
                try:
                    out.append("b2:" + hashlib.blake2b(self.read_bytes(rec), digest_size=12).hexdigest())
                except (OSError, ValueError):
                    out.append("unreadable")  # tried again next time: it may have been fixed meanwhile
            self._identities = out
        return self._identities

    def labels(self) -> list[str]:
        """Sorted unique labels (images without one are ignored).

        Example:
            >>> open_source("photos").labels()[:2]  # doctest: +SKIP
            ['Coffea arabica', 'Felis catus']
        """
        return sorted({r.label for r in self.records() if r.label is not None})

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for humans: what the source is and how many images and labels it holds."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickle paths and options only, whatever the size of the database."""
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore paths and options; listings and handles are rebuilt on first use."""
        self.__dict__.update(state)
        for name in self._TRANSIENT:
            setattr(self, name, None)

    def __repr__(self) -> str:
        """Class and location."""
        return f"{type(self).__name__}({str(self.path)!r})"


class FolderSource(ImageSource):
    """A folder of image files, walked recursively in sorted order of relative path.

    Image extensions are matched case-insensitively; hidden files and folders are skipped. The label is the
    first folder under the root (imagefolder convention), ``None`` for files at the top level. The
    fingerprint hashes relative paths, sizes and modification times.

    Example:
        >>> src = FolderSource("photos")  # doctest: +SKIP
        >>> len(src), src.labels()[:1], src.read_bytes(src.records()[0])[:2]  # doctest: +SKIP
        (48, ['Coffea arabica'], b'\\xff\\xd8')
    """

    kind = "folder"

    def __init__(self, path: str | Path) -> None:
        """Check that ``path`` is a folder; it is walked on first use."""
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"no such folder: {path}")
        if not path.is_dir():
            raise DataError(f"not a folder: {path}")
        super().__init__(path.resolve())

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        """Yield (relative posix path, stat) of every visible image file, in no particular order."""
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[str, str]] = [(str(self.path), "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                st = os.stat(folder)
                entries = list(os.scandir(folder))
            except OSError:
                continue  # unreadable subfolder: its images are simply not part of the database
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                continue
            seen.add((st.st_dev, st.st_ino))
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = prefix + entry.name
                try:
                    if entry.is_dir():
                        stack.append((entry.path, rel + "/"))
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                        yield rel, entry.stat()
                except OSError:
                    continue  # broken symlink or vanished file: nothing to read anyway

    def _scan(self) -> tuple[list[Record], str]:
        """Walk, sort, and hash paths + sizes + mtimes."""
        files = sorted(self._walk(), key=lambda item: item[0])
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(f"no images in {self.path} (looked for {exts}; hidden files are skipped)")
        records = [Record(i, rel, rel.split("/", 1)[0] if "/" in rel else None) for i, (rel, _) in enumerate(files)]
        self._identities = [f"{st.st_size}:{st.st_mtime_ns}" for _, st in files]
        fingerprint = _digest(iter([self.kind, *(f"{rel}|{st.st_size}|{st.st_mtime_ns}" for rel, st in files)]))
        return records, fingerprint

    def read_bytes(self, record: Record) -> bytes:
        """The file's bytes, as stored on disk."""
        return (self.path / record.locator).read_bytes()

    def describe(self) -> str:
        """E.g. ``image folder /data/photos: 48 images, 17 labels``."""
        return f"image folder {self.path}: {len(self)} images, {len(self.labels())} labels"


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
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


def _png_bytes(image: Any) -> bytes:
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
            mode = _detect_mode(local)
        if mode not in ("disk", "parquet", "imagefolder", "hub"):
            raise DataError(f"unknown Hugging Face dataset mode {mode!r}")
        super().__init__(local if mode == "hub" else local.resolve())
        self.hub_id: str | None = str(path) if mode == "hub" else None
        self.mode = mode
        self.split = split
        #: (split name, first row, end row) of each scanned span; "index" for a dataset without splits.
        self.parts: list[tuple[str, int, int]] = []
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
        return sorted(str(p) for p in self.path.rglob("*.parquet") if not _hidden(p, self.path))

    def _open(self) -> datasets.Dataset:
        """Load the dataset (this process's handle) and select the split."""
        with _quiet_datasets() as ds_lib:
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
                loaded = self._select_splits(ds_lib, loaded)
            else:
                if self.split is not None:
                    raise DataError(f"dataset {self._name()} has no splits, so --split {self.split!r} cannot apply")
                self.parts = [("index", 0, len(loaded))]
        self._dataset = loaded
        return loaded

    def _select_splits(self, ds_lib: Any, loaded: datasets.DatasetDict) -> datasets.Dataset:
        """The rows ``split`` names, in Hugging Face's split syntax (``train+validation``, ``train[:10%]``).

        The default is ``train`` if present, else the first split. Several splits are concatenated in the
        order given; :attr:`parts` remembers which rows came from where, so locators name their split.
        """
        splits = list(loaded)
        if not splits:
            raise DataError(f"dataset {self._name()} has no splits")
        if self.split is None:
            self.split = "train" if "train" in loaded else splits[0]
        sizes = {name: len(loaded[name]) for name in splits}
        try:
            spans = ds_lib.ReadInstruction.from_spec(self.split).to_absolute(sizes)
        except (ValueError, KeyError, AssertionError) as exc:
            raise DataError(
                f"dataset {self._name()}: bad --split {self.split!r} "
                f"({one_line(exc, typed=True)}; splits: {', '.join(splits)})"
            ) from exc
        self.parts = [(s.splitname, s.from_, s.to) for s in spans]
        pieces = [
            loaded[name] if (start, stop) == (0, sizes[name]) else loaded[name].select(range(start, stop))
            for name, start, stop in self.parts
        ]
        if len(pieces) == 1:
            return pieces[0]
        try:
            return ds_lib.concatenate_datasets(pieces)
        except ValueError as exc:
            why = one_line(exc, typed=True)
            raise DataError(f"dataset {self._name()}: splits {self.split!r} cannot be combined: {why}") from exc

    def split_counts(self) -> dict[str, int]:
        """Images per split scanned (``{"index": n}`` for a dataset without splits)."""
        counts: dict[str, int] = {}
        for name, start, stop in self.parts:
            counts[name] = counts.get(name, 0) + stop - start
        return counts

    def _positions(self) -> dict[str, tuple[int, int]]:
        """For each split, (row offset in the split, position of that row in the scanned table)."""
        out: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, start, stop in self.parts:
            out.setdefault(name, (start, pos))
            pos += stop - start
        return out

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
            files = sorted(p for p in self.path.rglob("*") if p.is_file() and not _hidden(p, self.path))
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
        return _digest(iter(parts))

    def read_bytes(self, record: Record) -> bytes:
        """The image's stored bytes (re-encoded losslessly as PNG only if nothing but pixels is available)."""
        prefix, _, index = record.locator.rpartition(":")
        where = self._positions().get(prefix)
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


def _hidden(path: Path, root: Path) -> bool:
    """Whether any component of ``path`` below ``root`` starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _detect_mode(path: Path) -> str:
    """Which kind of Hugging Face dataset lives at ``path``."""
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return "parquet"
        raise DataError(f"not a dataset folder: {path}")
    if path.is_dir():
        if any((path / marker).is_file() for marker in _SAVE_TO_DISK_MARKERS):
            return "disk"
        if any(path.glob("*.parquet")) or any(path.glob("data/**/*.parquet")):
            return "parquet"
        return "imagefolder"
    if _HUB_ID.match(str(path)) and not str(path).startswith((".", "~")):
        return "hub"
    raise DataError(f"no such file or directory: {path}")


def open_source(path: str | Path, image_column: str | None = None, split: str | None = None) -> ImageSource:
    """Open an image database: a folder of images or a Hugging Face dataset, detected from ``path``.

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
    if not local.exists():
        if _HUB_ID.match(str(path)) and not str(path).startswith((".", "~", "/")):
            return HFDatasetSource(str(path), image_column, mode="hub", split=split)
        raise DataError(f"no such file or directory: {local}")
    if local.is_file():
        if local.suffix.lower() == ".parquet":
            return HFDatasetSource(local, image_column, mode="parquet", split=split)
        raise DataError(f"{local} is a file: expected a folder of images or a dataset folder")
    mode = _detect_mode(local)
    if mode != "imagefolder":
        return HFDatasetSource(local, image_column, mode=mode, split=split)
    if image_column is not None or split is not None:
        return HFDatasetSource(local, image_column, mode="imagefolder", split=split)
    source = FolderSource(local)
    try:
        source.records()
    except DataError:
        # No images at all, but parquet shards deeper down (e.g. a hub snapshot's <config>/<split>/ layout).
        if any(p for p in local.rglob("*.parquet") if not _hidden(p, local)):
            return HFDatasetSource(local, image_column, mode="parquet", split=split)
        raise
    return source


def dataset_fingerprint(path: str | Path, image_column: str | None = None, split: str | None = None) -> str:
    """Fingerprint of the database at ``path`` (see :meth:`ImageSource.fingerprint`).

    Example:
        >>> dataset_fingerprint("photos")  # doctest: +SKIP
        '3f1c0d9a2b7e4c55'
    """
    return open_source(path, image_column, split).fingerprint()
