"""Listing the members of an uncompressed tar file fast: name, data offset and size, straight from the headers.

The standard library's ``tarfile`` builds a ``TarInfo`` per member in Python (about 15 us each, 15 s for the
million members of a 500,000-image WebDataset); reading the 512-byte headers directly costs about 2 us. Only
what WebDataset shards hold is understood: regular files under ustar, GNU long names and pax ``path``/``size``
records. A header that fails its checksum, or a file that ends inside a header, ends the walk with a reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_GNU_LONGNAME = b"L"
_PAX = b"x"


@dataclass(frozen=True, slots=True)
class Member:
    """One regular file of a tar: its name, where its data starts and how many bytes it has."""

    name: str
    offset: int
    size: int


@dataclass
class TarListing:
    """The members a walk found, the file's size, and why and at which byte the walk stopped early (if it did)."""

    members: list[Member]
    file_size: int
    problem: tuple[str, int] | None = None


def _number(field: bytes) -> int:
    """A header's numeric field: octal text, or GNU base-256 when the top bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    """Whether the header's stored checksum matches its bytes (the checksum field counted as spaces)."""
    field = header[148:156]
    try:
        stored = _number(field)
    except ValueError:
        return False
    return stored == sum(header) - sum(field) + 8 * 32


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            break
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def list_tar(path: str | os.PathLike[str]) -> TarListing:
    """The regular-file members of the tar at ``path``, in file order (raises ``OSError`` if it cannot open).

    A member whose data runs past the end of the file is listed as it is declared (its reader finds it
    short); a corrupt or cut header stops the walk, and the listing says why and at which byte.

    Example:
        >>> [m.name for m in list_tar("00000.tar").members][:2]  # doctest: +SKIP
        ['0000000.jpg', '0000000.json']
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        listing = TarListing([], end)
        pread = os.pread
        offset = 0
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            if offset + BLOCK > end:
                if offset < end or not listing.members:
                    why = "truncated shard" if listing.members else "not a tar archive (too short)"
                    listing.problem = (why, offset)
                break
            header = pread(fd, BLOCK, offset)
            if header[0] == 0 and not any(header):
                break  # the end-of-archive blocks
            if not _checksum_ok(header):
                listing.problem = ("corrupt tar header" if listing.members else "not a tar archive", offset)
                break
            kind = header[156:157]
            size = int(pax["size"]) if "size" in pax else _number(header[124:136])
            data = offset + BLOCK
            if kind == _GNU_LONGNAME:
                long_name = pread(fd, size, data).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == _PAX:
                pax = _pax_records(pread(fd, size, data))
            else:
                if kind in _REGULAR:
                    name = pax.get("path") or long_name
                    if name is None:
                        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                        if header[257:262] == b"ustar" and header[345]:
                            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                            name = f"{prefix}/{name}"
                    listing.members.append(Member(name, data, size))
                long_name, pax = None, {}
            offset = data + (size + BLOCK - 1) // BLOCK * BLOCK
        return listing
    finally:
        os.close(fd)
