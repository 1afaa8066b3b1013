"""A folder of image files as an image database (the imagefolder layout: one subfolder per label)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from autotune.data.records import ImageSource, Record, digest
from autotune.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


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

    def _walk(self) -> Iterator[tuple[str, str]]:
        """Yield (relative posix path, ``size:mtime_ns``) of every visible image file, in no particular order.

        Two short strings per file, not its stat result: a 500,000-image listing stays a few hundred MB.
        """
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
                        st = entry.stat()
                        yield rel, f"{st.st_size}:{st.st_mtime_ns}"
                except OSError:
                    continue  # broken symlink or vanished file: nothing to read anyway

    def _scan(self) -> tuple[list[Record], str]:
        """Walk, sort, and hash paths + sizes + mtimes."""
        files = sorted(self._walk(), key=lambda item: item[0])
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(f"no images in {self.path} (looked for {exts}; hidden files are skipped)")
        tops = {rel.split("/", 1)[0] for rel, _ in files if "/" in rel}
        names = self._folder_labels(tops)
        records = [
            Record(i, rel, *names[rel.split("/", 1)[0]]) if "/" in rel else Record(i, rel, None, None, None)
            for i, (rel, _) in enumerate(files)
        ]
        self._identities = [identity for _, identity in files]
        fingerprint = digest(iter([self.kind, *(f"{rel}|{identity.replace(':', '|')}" for rel, identity in files)]))
        return records, fingerprint

    def _folder_labels(self, folders: set[str]) -> dict[str, tuple[str | None, None, str | None]]:
        """(label, caption, common name) of the images under each top folder: the folder's name alone."""
        return {folder: (folder, None, None) for folder in folders}

    def read_bytes(self, record: Record) -> bytes:
        """The file's bytes, as stored on disk."""
        return (self.path / record.locator).read_bytes()

    def display_path(self, record: Record) -> str:
        """The image's file path."""
        return str(self.path / record.locator)

    def describe(self) -> str:
        """E.g. ``image folder /data/photos: 48 images, 17 labels``."""
        return f"image folder {self.path}: {len(self)} images, {len(self.labels())} labels"
