"""What a retrieval returns: hits per query and how they were obtained; the error of a database with no image."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import DataError


@dataclass
class Hit:
    """One retrieved image: its stable id, score, label, locator and a displayable path."""

    rank: int
    id: int
    score: float
    label: str | None
    path: str
    locator: str = ""


class NoReadableImages(DataError):
    """Not one image of the database could be read; ``skipped`` says why for each."""

    def __init__(self, where: str, skipped: list[dict[str, Any]]) -> None:
        """Name the database and count the reasons, most frequent first."""
        reasons = Counter(str(s.get("reason", "?")) for s in skipped)
        why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        super().__init__(f"no image could be read in {where}: {len(skipped)} skipped ({why or 'none listed'})")
        self.skipped = skipped


@dataclass
class RetrievalResult:
    """Top-k per query, and how they were obtained."""

    queries: list[str]
    hits: list[list[Hit]]
    mode: str  # index | index-new | index-updated | index-resumed | scan
    images: int
    skipped: list[dict[str, Any]]
    scan_seconds: float
    query_ms: float
    images_per_s: float | None
    config: str
    index_path: str | None
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    source: str = ""
    splits: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0
    truncated: list[bool] = field(default_factory=list)  # per query: longer than the text tower's context
    nodes: list[dict[str, Any]] = field(default_factory=list)  # a Ray scan's nodes: address, machine id, images

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "queries": [
                {"query": q, "truncated": bool(self.truncated and self.truncated[n]), "hits": [h.__dict__ for h in hs]}
                for n, (q, hs) in enumerate(zip(self.queries, self.hits, strict=True))
            ],
            "mode": self.mode,
            "images": self.images,
            "skipped": len(self.skipped),
            "scan_seconds": round(self.scan_seconds, 3),
            "startup_s": round(self.startup_s, 3),
            "query_ms": round(self.query_ms, 2),
            "images_per_s": round(self.images_per_s, 2) if self.images_per_s else None,
            "config": self.config,
            "index": self.index_path,
            "source": self.source,
            "splits": self.splits,
            "index_changes": self.changes,
            "notes": self.notes,
            "outputs": self.outputs,
            **({"nodes": self.nodes, "min_images_per_node": min(n["images"] for n in self.nodes)} if self.nodes
               else {}),
        }
