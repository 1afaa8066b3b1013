"""A source that presents another one's images repeatedly under distinct ids: large scans from a small corpus."""

from __future__ import annotations

from pathlib import Path

from autotune.data.records import ImageSource, Record, digest
from autotune.errors import DataError


class RepeatedSource(ImageSource):
    """``total`` records cycling through ``base``'s images: record ``i`` is base image ``i % len(base)``.

    Every record has its own id and locator (``rep<k>/<base locator>``), so a scan of 500,000 images can be run
    on a machine where only 20,000 distinct files fit in the time to generate them; the scan does all of its
    work per record (read, decode, resize, embed), the page cache aside. Workers never list the 500,000
    records: reading a record's bytes needs only the base's listing.

    Example:
        >>> src = RepeatedSource(open_source("corpus/"), total=500_000)  # doctest: +SKIP
        >>> len(src), src.records()[20_000].locator  # doctest: +SKIP
        (500000, 'rep1/Felis catus/0000000.jpg')
    """

    kind = "repeated"

    def __init__(self, base: ImageSource, total: int) -> None:
        """Present ``base`` until ``total`` records are listed."""
        if total < 1:
            raise DataError(f"a repeated source needs at least one record, got total={total}")
        super().__init__(Path(base.path))
        self.base = base
        self.total = total

    def _scan(self) -> tuple[list[Record], str]:
        """``total`` records over the base's, and a fingerprint of the base's and the count."""
        base = self.base.records()
        if not base:
            raise DataError(f"nothing to repeat: {self.base.describe()} has no records")
        n = len(base)
        records = [
            Record(i, f"rep{i // n}/{base[i % n].locator}", base[i % n].label) for i in range(self.total)
        ]
        return records, digest(iter([self.base.fingerprint(), str(self.total)]))

    def read_bytes(self, record: Record) -> bytes:
        """The base image this record presents."""
        base = self.base.records()
        return self.base.read_bytes(base[record.id % len(base)])

    def describe(self) -> str:
        """What is repeated, and how often."""
        return f"{self.total} records cycling through {self.base.describe()}"
