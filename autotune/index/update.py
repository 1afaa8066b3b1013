"""Index updates: compare the database with the catalog, embed only what is new or changed, commit.

Ids are stable: an image keeps its id for as long as its locator exists, so adding one file renumbers
nothing. Each record carries a cheap content identity (size and mtime for files, a content hash for
Hugging Face rows); a changed identity means re-embedding under the same id. An update is planned, the plan
committed (so a kill resumes the same plan), the new and changed images scanned into shards, and then one
new generation is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.data.sources import Record
from autotune.engine.sink import read_shards
from autotune.errors import AutotuneError
from autotune.index.store import SHARD_PREFIX, EmbeddingIndex, IndexKey, IndexMeta

CATALOG_COLUMNS = ("id", "locator", "identity", "label", "status", "detail")
EMBEDDED, PENDING, SKIPPED = "embedded", "pending", "skipped"
_UNREADABLE = "unreadable"  # an identity that never matches: such images are tried again on every update


class IndexBookkeepingError(AutotuneError):
    """The shards of an update do not match its plan (duplicates, strays or images unaccounted for)."""


@dataclass
class UpdatePlan:
    """What an update will do: the catalog it commits, the records still to embed, and counts in words."""

    generation: int
    catalog: dict[str, list[Any]]
    todo: list[Record]
    counts: dict[str, int]
    next_id: int
    fingerprint: str
    resumed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        """Whether anything is added, changed or removed."""
        return any(self.counts[k] for k in ("new", "changed", "removed"))

    def describe(self) -> str:
        """E.g. ``1,200 new, 3 changed, 40 removed, 498,757 kept``."""
        return ", ".join(f"{self.counts[k]:,} {k}" for k in ("new", "changed", "removed", "kept"))


def is_up_to_date(meta: IndexMeta | None, key: IndexKey, fingerprint: str) -> bool:
    """Whether ``meta`` is a complete index made with ``key`` of the database whose fingerprint is
    ``fingerprint``, with no update pending: then it is served as it is, without planning anything."""
    return bool(
        meta and meta.key == key and meta.complete and not meta.pending and meta.dataset_fingerprint == fingerprint
    )


def _empty_catalog() -> dict[str, list[Any]]:
    """A catalog with no rows."""
    return {c: [] for c in CATALOG_COLUMNS}


def plan_update(
    index: EmbeddingIndex, meta: IndexMeta, records: Sequence[Record], identities: Sequence[str], fingerprint: str
) -> UpdatePlan:
    """Diff ``records`` against the committed catalog; resume the stored plan if the database is the same.

    The plan is written before anything is scanned, so shards committed by a scan that is then killed
    belong to a plan that the next run finds again.
    """
    pending = meta.pending
    plan_file = index.file("plan", pending["generation"]) if pending else None
    if pending and pending.get("fingerprint") == fingerprint and plan_file is not None and plan_file.is_file():
        catalog = index.read_table(plan_file)
        done = set(index.shard_ids().tolist())
        todo: list[Record] = [
            Record(i, loc, lab)
            for i, loc, lab, st in zip(
                catalog["id"], catalog["locator"], catalog["label"], catalog["status"], strict=True
            )
            if st == PENDING and i not in done
        ]
        return UpdatePlan(
            pending["generation"], catalog, todo, dict(pending["counts"]), pending["next_id"], fingerprint, len(done)
        )
    index.drop_update()  # a plan for another state of the database: its shards cannot be trusted
    old = index.read_table(index.file("catalog", meta.generation)) if meta.complete else _empty_catalog()
    by_locator = {loc: n for n, loc in enumerate(old["locator"])}
    catalog = _empty_catalog()
    todo = []
    counts = {"new": 0, "changed": 0, "removed": 0, "kept": 0}
    next_id = meta.next_id
    for rec, ident in zip(records, identities, strict=True):
        n = by_locator.pop(rec.locator, None)
        if n is not None and old["identity"][n] == ident and ident != _UNREADABLE:
            counts["kept"] += 1
            row = [old["id"][n], rec.locator, ident, rec.label, old["status"][n], old["detail"][n]]
        else:
            counts["changed" if n is not None else "new"] += 1
            rid = old["id"][n] if n is not None else next_id
            next_id += 0 if n is not None else 1
            row = [rid, rec.locator, ident, rec.label, PENDING, ""]
            todo.append(Record(rid, rec.locator, rec.label))
        for col, value in zip(CATALOG_COLUMNS, row, strict=True):
            catalog[col].append(value)
    counts["removed"] = len(by_locator)
    generation = meta.generation + 1
    index.write_table(index.file("plan", generation), catalog)
    meta.pending = {"generation": generation, "fingerprint": fingerprint, "counts": counts, "next_id": next_id}
    index.write_meta(meta)
    return UpdatePlan(generation, catalog, todo, counts, next_id, fingerprint)


def commit_update(
    index: EmbeddingIndex, meta: IndexMeta, plan: UpdatePlan, skipped: Sequence[dict[str, Any]]
) -> IndexMeta:
    """Check the shards against the plan, then commit the new generation (arrays, catalog, metadata).

    Every planned image must be embedded exactly once or skipped with a reason; anything else is an
    :class:`IndexBookkeepingError` and nothing is committed.
    """
    if meta.complete and not plan.changes and not plan.todo:
        meta.dataset_fingerprint, meta.pending = plan.fingerprint, None  # e.g. files touched, bytes the same
        index.write_meta(meta)
        index.drop_update()
        return meta
    shard_ids, shard_embs = read_shards(index.path, SHARD_PREFIX)
    catalog = plan.catalog
    planned = {i for i, st in zip(catalog["id"], catalog["status"], strict=True) if st == PENDING}
    uniq = np.unique(shard_ids)
    if len(uniq) != len(shard_ids):
        raise IndexBookkeepingError(
            f"index {index.path}: the update embedded some images twice; run with --rebuild-index"
        )
    strays = set(uniq.tolist()) - planned
    if strays:
        raise IndexBookkeepingError(f"index {index.path}: {len(strays)} embeddings of images not in the plan")
    embedded = set(uniq.tolist())
    skips = {int(s["id"]): s for s in skipped}
    missing = planned - embedded - set(skips)
    if missing:
        raise IndexBookkeepingError(
            f"index {index.path}: {len(missing)} images were neither embedded nor skipped; run again to finish them"
        )
    for n, (rid, st) in enumerate(zip(catalog["id"], catalog["status"], strict=True)):
        if st != PENDING:
            continue
        if rid in embedded:
            catalog["status"][n], catalog["detail"][n] = EMBEDDED, ""
        else:
            catalog["status"][n] = f"{SKIPPED}:{skips[rid]['reason']}"
            catalog["detail"][n] = str(skips[rid].get("detail", ""))[:200]
    keep = np.array(
        [i for i, st in zip(catalog["id"], catalog["status"], strict=True) if st == EMBEDDED and i not in planned],
        dtype=np.int64,
    )
    old_ids, old_embs = _committed_arrays(index, meta)
    mask = np.isin(old_ids, keep)
    if shard_embs.size and old_embs.size and shard_embs.shape[1] != old_embs.shape[1]:
        raise IndexBookkeepingError(f"index {index.path}: embedding size changed mid-index; run with --rebuild-index")
    ids = np.concatenate([old_ids[mask], shard_ids.astype(np.int64)])
    parts = [p for p in (old_embs[mask], shard_embs) if p.size]
    dim = meta.key.embed_dim
    embs = np.concatenate(parts).astype(meta.key.dtype) if parts else np.zeros((0, dim), meta.key.dtype)
    order = np.argsort(ids, kind="stable")
    index.write_arrays(plan.generation, ids[order], embs[order])
    index.write_table(index.file("catalog", plan.generation), catalog)
    meta.generation, meta.next_id, meta.pending, meta.complete = plan.generation, plan.next_id, None, True
    meta.dataset_fingerprint = plan.fingerprint
    meta.records, meta.embedded = len(catalog["id"]), len(ids)
    meta.skipped = sum(1 for st in catalog["status"] if st.startswith(SKIPPED))
    index.write_meta(meta)  # the commit point: readers now load this generation
    index.drop_old_generations(plan.generation)
    index.drop_update()
    return meta


def _committed_arrays(index: EmbeddingIndex, meta: IndexMeta) -> tuple[np.ndarray, np.ndarray]:
    """The committed generation's ids and embeddings (empty when there is none yet)."""
    if not meta.complete:
        return np.zeros(0, np.int64), np.zeros((0, meta.key.embed_dim), meta.key.dtype)
    return np.load(index.file("ids", meta.generation)), np.load(index.file("embeddings", meta.generation))


def skipped_rows(catalog: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Skipped images of a catalog as ``{id, locator, reason, detail}`` rows."""
    return [
        {"id": i, "locator": loc, "reason": st.partition(":")[2], "detail": d}
        for i, loc, st, d in zip(catalog["id"], catalog["locator"], catalog["status"], catalog["detail"], strict=True)
        if st.startswith(SKIPPED)
    ]
