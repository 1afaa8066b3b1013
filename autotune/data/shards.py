"""WebDataset tar shards as an image database, read in place: no image is extracted to a file.

A shard holds samples as consecutive members sharing a key (``KEY.jpg`` beside ``KEY.json`` / ``KEY.txt``),
which is what img2dataset writes and what LAION, DataComp and COYO are published as. The listing reads the
tar headers (:mod:`autotune.data.tar`) and the small sidecar members; each record's locator names its shard
and member and carries the member's offset and size, so a producer process reads an image with one
positioned read, without listing the shard again.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from autotune.data.folder import IMAGE_EXTENSIONS
from autotune.data.records import ImageSource, Record, digest
from autotune.data.tar import TarListing, list_tar
from autotune.errors import DataError

SHARD_SUFFIX = ".tar"
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WHERE = re.compile(r"@(\d+)\+(\d+)$")
#: A listing problem stands in the record list as a member named ``!<reason>``: reading it fails with the reason.
PROBLEM_MARK = "!"
_UNREADABLE = "unreadable"


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset's brace syntax: ``{00000..00999}`` (zero-padded ranges) and ``{a,b}`` (choices).

    Several braces expand as a product, left to right.

    Example:
        >>> expand_braces("shards/{000..002}.tar")
        ['shards/000.tar', 'shards/001.tar', 'shards/002.tar']
    """
    parts = _BRACE.split(pattern)  # text, brace body, text, brace body, ..., text
    choices: list[list[str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            choices.append([part])
            continue
        bounds = _RANGE.match(part)
        if bounds:
            lo, hi = int(bounds[1]), int(bounds[2])
            width = len(bounds[1]) if bounds[1].startswith("0") else 0
            step = 1 if hi >= lo else -1
            choices.append([str(v).zfill(width) for v in range(lo, hi + step, step)])
        else:
            choices.append(part.split(","))
    return ["".join(combo) for combo in itertools.product(*choices)]


def is_shard_pattern(text: str) -> bool:
    """Whether ``text`` is a brace pattern of shard paths (e.g. ``data/{00000..00009}.tar``)."""
    return bool(_BRACE.search(text)) and is_shard_name(expand_braces(text)[0])


def is_shard_name(name: str) -> bool:
    """Whether a file name is a tar shard's (compressed ones included, to be refused by name)."""
    return name.lower().endswith((SHARD_SUFFIX, *_COMPRESSED))


def shard_files_in(folder: Path) -> list[Path]:
    """The visible ``.tar`` files directly in ``folder``, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(
        Path(e.path) for e in entries if not e.name.startswith(".") and e.name.endswith(SHARD_SUFFIX) and e.is_file()
    )


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member: WebDataset's key is the name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


class WebDatasetSource(ImageSource):
    """WebDataset tar shards: a brace pattern (``data/{00000..00999}.tar``), one ``.tar`` file, or a folder of them.

    Records are the samples that hold an image member (``.jpg``, ``.png``, ``.webp``...), in shard order then
    file order; the locator is ``<shard>/<member>@<offset>+<size>``. Labels come from the sample's JSON
    ``label`` (a string or a number), captions from its JSON ``caption``, else its ``.txt``. Identities are the
    shard's size and mtime, so a replaced shard re-embeds its images and the others keep theirs. A shard
    that cannot be read, or whose listing stops at a corrupt or cut header, adds one record standing for
    what was lost; reading it raises ``OSError`` with the reason, so a scan counts it as a skip and goes on.

    Example:
        >>> src = WebDatasetSource("shards/{00000..00001}.tar")  # doctest: +SKIP
        >>> src.records()[0].locator  # doctest: +SKIP
        '00000.tar/0000000.jpg@512+38211'
    """

    kind = "webdataset"

    def __init__(self, path: str | Path) -> None:
        """Resolve the shards (a pattern, a file or a folder); raise :class:`DataError` if there are none."""
        text = str(path)
        self.pattern = text if _BRACE.search(text) else None
        local = Path(text).expanduser()
        if self.pattern is not None:
            shards = [Path(p).expanduser() for p in expand_braces(text)]
        elif local.is_dir():
            shards = shard_files_in(local)
        else:
            shards = [local]
        bad = [s for s in shards if s.name.lower().endswith(_COMPRESSED)]
        if bad:
            raise DataError(f"{bad[0]} is compressed: shards are read in place, so they must be plain .tar files")
        present = [s.resolve() for s in shards if s.is_file()]
        if not present:
            raise DataError(f"no .tar shards found at {text}")
        self.missing = len(shards) - len(present)
        self.root = Path(os.path.commonpath([str(s.parent) for s in present]))
        #: Shard paths relative to the root, in order: what locators name.
        self.shards = [s.relative_to(self.root).as_posix() for s in present]
        # A pattern is its own database (another range is another index); a folder or a file is its path.
        super().__init__(self.root / Path(text).name if self.pattern else (local.resolve()))

    # ----------------------------------------------------------------------------------- listing

    def _shard_records(self, rel: str, listing: TarListing, fd: int, first: int) -> Iterator[Record]:
        """Records of one listed shard (ids from ``first``): one per sample with an image member."""
        samples: dict[str, dict[str, tuple[int, int, str]]] = {}
        for m in listing.members:
            key, ext = _split_member(m.name)
            samples.setdefault(key, {})[ext] = (m.offset, m.size, m.name)
        n = first
        for members in samples.values():
            image = next((members[e] for e in members if f".{e}" in IMAGE_EXTENSIONS), None)
            if image is None:
                continue
            label, caption = _sidecars(members, fd, listing.file_size)
            offset, size, name = image
            yield Record(n, f"{rel}/{name}@{offset}+{size}", label, caption)
            n += 1
        if listing.problem:
            why, at = listing.problem
            yield Record(n, f"{rel}/{PROBLEM_MARK}{why}@{at}+0", None)

    def _scan(self) -> tuple[list[Record], str]:
        """List every shard's samples; fingerprint the shard names, sizes and mtimes."""
        records: list[Record] = []
        identities: list[str] = []
        parts = [self.kind]
        for rel in self.shards:
            path = self.root / rel
            try:
                st = os.stat(path)
                listing = list_tar(path)
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                records.append(Record(len(records), f"{rel}/{PROBLEM_MARK}cannot open ({exc.strerror})@0+0", None))
                identities.append(_UNREADABLE)
                parts.append(f"{rel}|unreadable")
                continue
            try:
                found = list(self._shard_records(rel, listing, fd, len(records)))
            finally:
                os.close(fd)
            identity = f"{st.st_size}:{st.st_mtime_ns}"
            records += found
            identities += [_UNREADABLE if f"/{PROBLEM_MARK}" in r.locator else identity for r in found]
            parts.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
        if not any(f"/{PROBLEM_MARK}" not in r.locator for r in records):
            raise DataError(f"no images in the shards at {self.pattern or self.path} ({len(self.shards)} shards)")
        self._identities = identities
        return records, digest(iter(parts))

    # ----------------------------------------------------------------------------------- reading

    def read_bytes(self, record: Record) -> bytes:
        """The member's bytes, with one positioned read; ``OSError`` for a listing problem or a cut member."""
        head, where = _split_locator(record.locator)
        rel, _, member = head.partition(f"{SHARD_SUFFIX}/")
        rel += SHARD_SUFFIX
        if member.startswith(PROBLEM_MARK):
            at = where[0] if where else 0
            raise OSError(f"{rel}: {member[1:]} (at byte {at}); the rest is not read")
        if where is None:
            where = self._find(rel, member)
        offset, size = where
        with open(self.root / rel, "rb", buffering=0) as fh:
            data = os.pread(fh.fileno(), size, offset)
        if len(data) < size:
            raise OSError(f"truncated shard {rel}: {member} has {len(data)} of its {size} bytes")
        return data

    def _find(self, rel: str, member: str) -> tuple[int, int]:
        """Offset and size of a member named without them (a locator from elsewhere): lists its shard."""
        for m in list_tar(self.root / rel).members:
            if m.name == member:
                return m.offset, m.size
        raise OSError(f"no member {member} in shard {rel}")

    def describe(self) -> str:
        """E.g. ``webdataset /data/{00000..00009}.tar (10 shards): 10,000 images, 17 labels``."""
        missing = f", {self.missing} missing" if self.missing else ""
        return (
            f"webdataset {self.pattern or self.path} ({len(self.shards)} shards{missing}): "
            f"{len(self)} images, {len(self.labels())} labels"
        )

    def work_unit(self, record: Record) -> str | None:
        """The shard a record lies in: shards are the unit of work handed to Ray nodes."""
        head, _ = _split_locator(record.locator)
        return head.partition(f"{SHARD_SUFFIX}/")[0] + SHARD_SUFFIX

    def display_path(self, record: Record) -> str:
        """``<shard path>/<member>``: where the image is, for people."""
        head, _ = _split_locator(record.locator)
        return str(self.root / head)


def _split_locator(locator: str) -> tuple[str, tuple[int, int] | None]:
    """(``<shard>/<member>``, (offset, size) or None) of a locator."""
    found = _WHERE.search(locator)
    if found is None:
        return locator, None
    return locator[: found.start()], (int(found[1]), int(found[2]))


def _sidecars(members: dict[str, tuple[int, int, str]], fd: int, file_size: int) -> tuple[str | None, str | None]:
    """(label, caption) from a sample's ``.json`` and ``.txt`` members (unreadable ones are ignored)."""
    label = caption = None
    if "json" in members:
        offset, size, _ = members["json"]
        try:
            meta = json.loads(os.pread(fd, min(size, max(0, file_size - offset)), offset))
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            value = meta.get("label")
            label = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
            text = meta.get("caption")
            caption = text if isinstance(text, str) else None
    if "txt" in members and caption is None:  # img2dataset writes the caption in both: one read is enough
        offset, size, _ = members["txt"]
        try:
            caption = os.pread(fd, min(size, 4096), offset).decode("utf-8", "replace").strip() or None
        except OSError:
            pass
    return label or None, caption
