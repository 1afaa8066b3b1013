"""The search service behind the HTTP app: the text tower loaded once, the index's newest generation, images by id.

Everything here is plain Python (no HTTP): the app calls it from worker threads. Queries are answered from an
immutable snapshot of one generation; a new generation committed by another process is loaded beside it and
swapped in, so a request in flight finishes on the snapshot it started with.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data.folder import FolderSource
from autotune.data.records import ImageSource, Record
from autotune.errors import AutotuneError, ConfigError
from autotune.index import EmbeddingIndex, IndexKey, IndexMeta
from autotune.progress import Log, quiet

THUMBNAIL_PX = 256
_THUMBNAILS_KEPT = 1024
_QUERIES_KEPT = 2048
_RELOAD_CHECK_S = 0.5  # how often a request may look at meta.json for a new generation


class NotServed(AutotuneError):
    """An image the server does not serve: not in the index, or outside the database; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 404) -> None:
        """A one-line reason and the HTTP status it maps to."""
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Snapshot:
    """One committed generation, loaded: search it, look its images up. Never changes once made."""

    index: EmbeddingIndex
    meta: IndexMeta
    rows: dict[int, int]  # embedded id -> catalog row
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        """Load the committed generation of the index at ``path``."""
        index = EmbeddingIndex(path)
        index.load()
        assert index.meta is not None and index.catalog is not None and index.ids is not None
        embedded = set(index.ids.tolist())
        rows = {int(i): n for n, i in enumerate(index.catalog["id"]) if int(i) in embedded}
        return cls(index, index.meta, rows)

    def __len__(self) -> int:
        """Images this generation can return."""
        return len(self.index)

    def record(self, image_id: int) -> Record:
        """The catalog's record of an embedded image (:class:`NotServed` for any other id)."""
        row = self.rows.get(image_id)
        if row is None:
            raise NotServed(f"no image {image_id} in the index")
        cat = self.index.catalog
        assert cat is not None
        return Record(image_id, cat["locator"][row], cat["label"][row])

    def identity(self, image_id: int) -> str:
        """The content identity of an embedded image (it changes when the file does)."""
        cat = self.index.catalog
        assert cat is not None
        return str(cat["identity"][self.rows[image_id]])


@dataclass
class Answer:
    """One query's answer, as the API returns it."""

    query: str
    truncated: bool
    results: list[dict[str, Any]]
    timing: dict[str, float] = field(default_factory=dict)  # the batch's text and index milliseconds, its size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"query": self.query, "truncated": self.truncated, "results": self.results}


class TextTower:
    """The model's text tower, loaded once; recent queries' embeddings are kept (a page reload costs nothing)."""

    def __init__(self, model: str) -> None:
        """Load the model (the one-line errors of :func:`~autotune.models.loading.load_clip`)."""
        self.model = model
        self._fake_dim = 0
        self._encoder: Any = None
        if model.startswith("fake:"):
            from autotune.models.backends import _fake_dim

            self._fake_dim = _fake_dim(model)
        else:
            from autotune.models.text import TextEncoder

            self._encoder = TextEncoder(model)
        self._kept: OrderedDict[str, tuple[np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self._fake_dim or int(self._encoder.embed_dim)

    @property
    def runtime(self) -> str:
        """What runs the tower: onnx (ONNX Runtime), eager, or fake."""
        return "fake" if self._encoder is None else str(self._encoder.runtime)

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Unit embeddings (texts, dim) and which texts were cut to the context; new texts in one batch."""
        with self._lock:
            known = {t: self._kept[t] for t in set(texts) if t in self._kept}
        todo = [t for t in dict.fromkeys(texts) if t not in known]
        if todo:
            vectors, cut = self._encode(todo)
            fresh = {t: (v, c) for t, v, c in zip(todo, vectors, cut, strict=True)}
            known.update(fresh)
            with self._lock:
                self._kept.update(fresh)
                while len(self._kept) > _QUERIES_KEPT:
                    self._kept.popitem(last=False)
        vectors = np.stack([known[t][0] for t in texts]).astype(np.float32)
        return vectors, [bool(known[t][1]) for t in texts]

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Run the tower on ``texts`` (one batch)."""
        if self._encoder is None:
            from autotune.engine.runner import fake_text_embeddings

            return fake_text_embeddings(texts, self._fake_dim), [False] * len(texts)
        vectors, cut = self._encoder.encode(texts)
        return vectors, cut


class SearchService:
    """Answers queries and serves images of one index folder, following the generations another process commits.

    ``source`` is the database the index follows (images are read through it); ``profile`` describes the
    profile this server was started with, for :meth:`info`.

    Example:
        >>> svc = SearchService(Path("my-index"), "synthetic:tiny", source)  # doctest: +SKIP
        >>> svc.search(["a red fox"], k=9)[0].results[0]["label"]  # doctest: +SKIP
    """

    def __init__(
        self,
        index_dir: Path,
        model: str,
        source: ImageSource | None,
        *,
        tower: TextTower | None = None,
        profile: dict[str, Any] | None = None,
        log: Log | None = None,
    ) -> None:
        """Load the index's committed generation and the text tower; refuse an index of another model."""
        self.index_dir = Path(index_dir)
        self.source = source
        self.profile = profile or {}
        self.log = log or quiet
        self.snapshot = Snapshot.load(self.index_dir)
        self.key: IndexKey = self.snapshot.meta.key
        if self.key.model != model:
            raise ConfigError(
                f"index {index_dir} was built with {self.key.model}, not {model}: give --model {self.key.model}"
            )
        self.tower = tower or TextTower(model)
        if self.tower.dim != self.key.embed_dim:
            raise ConfigError(f"the text tower embeds {self.tower.dim} wide, the index {self.key.embed_dim}")
        # Files of a folder (iNaturalist's layout included) are read here, only where they really lie inside it.
        self.root = Path(os.path.realpath(source.path)) if isinstance(source, FolderSource) else None
        self._thumbs: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._meta_stamp()
        self._loading = False
        self.other_key: str | None = None  # why a newer generation is not served, in words
        # Set by the caller: a note when the profile in use now would key another index folder (None: it does not).
        self.current_folder: Callable[[], str | None] = lambda: None

    # ------------------------------------------------------------------------------------ generations

    def _meta_stamp(self) -> tuple[int, int, int] | None:
        """What identifies the committed metadata file now (it is replaced atomically at every commit)."""
        try:
            st = (self.index_dir / "meta.json").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Notice a generation committed since the last look; load it beside the current one and swap it in.

        Called on requests, at most every half second; the loading runs in a thread of its own.
        """
        now = time.monotonic()
        if now - self._checked < _RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._meta_stamp()
        if stamp == self._stamp or stamp is None:
            return
        with self._lock:
            if self._loading:
                return
            self._loading = True
        threading.Thread(target=self._load_new, args=(stamp,), name="index-reload", daemon=True).start()

    def _load_new(self, stamp: tuple[int, int, int]) -> None:
        """Load the newest generation if it is complete and of this server's key."""
        try:
            meta = EmbeddingIndex(self.index_dir).read_meta()
            if meta is None or not meta.complete or meta.pending:
                return  # an update in flight: its commit changes meta.json again
            if meta.key != self.key:
                self.other_key = (
                    f"the index was rebuilt since this server started ({self.key.describe_difference(meta.key)}): "
                    "this server keeps answering from the generation it loaded; restart it to serve the new one"
                )
                self._stamp = stamp
                return
            if meta.generation != self.snapshot.meta.generation:
                fresh = Snapshot.load(self.index_dir)
                self.snapshot = fresh  # one reference swap: requests in flight keep the old snapshot
                self.log(f"index generation {fresh.meta.generation} loaded ({len(fresh):,} images)")
            self._stamp = stamp
        except AutotuneError as exc:
            self.log(f"warning: new index generation not loaded: {exc}")
        finally:
            with self._lock:
                self._loading = False

    # ------------------------------------------------------------------------------------ queries

    def search(self, texts: Sequence[str], k: int) -> list[Answer]:
        """Top-k of each text from the current generation (texts embedded as one batch)."""
        return self.search_many([(list(texts), k)])[0]

    def search_many(self, requests: Sequence[tuple[list[str], int]]) -> list[list[Answer]]:
        """Answer several requests' texts together: one text-tower batch and one index pass for all of them."""
        snap = self.snapshot
        texts = [t for texts, _k in requests for t in texts]
        t0 = time.perf_counter()
        vectors, cut = self.tower.embed(texts)
        t1 = time.perf_counter()
        kmax = min(max(k for _t, k in requests), len(snap))
        scores, ids = snap.index.search(vectors, kmax)
        timing = {"text": 1000 * (t1 - t0), "index": 1000 * (time.perf_counter() - t1), "batch": len(texts)}
        answers: list[list[Answer]] = []
        at = 0
        for req_texts, k in requests:
            group = []
            for text in req_texts:
                results = [
                    self._result(snap, rank, int(i), float(s))
                    for rank, (s, i) in enumerate(zip(scores[at][:k], ids[at][:k], strict=True), start=1)
                ]
                group.append(Answer(text, cut[at], results, timing))
                at += 1
            answers.append(group)
        return answers

    @staticmethod
    def _result(snap: Snapshot, rank: int, image_id: int, score: float) -> dict[str, Any]:
        """One hit as the API returns it."""
        record = snap.record(image_id)
        return {
            "rank": rank,
            "id": image_id,
            "score": round(score, 6),
            "label": record.label,
            "url": f"/api/images/{image_id}",
            "thumbnail": f"/api/thumbnails/{image_id}",
        }

    def size(self) -> int:
        """Images the current generation can return."""
        return len(self.snapshot)

    def info(self) -> dict[str, Any]:
        """What this server answers from: model, embedding recipe, images, generation, who built it."""
        snap = self.snapshot
        meta = snap.meta
        return {
            "model": meta.key.model,
            "recipe": meta.key.recipe,
            "backend": meta.key.recipe.split("@")[0],
            "precision": _precision(meta.key.recipe),
            "index_dtype": meta.key.dtype,
            "embed_dim": meta.key.embed_dim,
            "images": len(snap),
            "records": meta.records,
            "skipped": meta.skipped,
            "generation": meta.generation,
            "generation_loaded_at": round(snap.loaded_at, 3),
            "index": str(self.index_dir),
            "dataset": meta.dataset,
            "built_by_profile": meta.profile,
            "built_with": meta.config,
            "scan": snap.index.scan,
            "text_runtime": self.tower.runtime,
            "server_profile": self.profile,
            "note": self.other_key or self.current_folder(),
        }

    # ------------------------------------------------------------------------------------ images

    def image(self, image_id: int) -> tuple[bytes, str]:
        """The original bytes of an embedded image and their content type."""
        snap = self.snapshot
        record = snap.record(image_id)
        data = self._read(record)
        return data, _content_type(data)

    def thumbnail(self, image_id: int) -> bytes:
        """A JPEG of at most 256 px a side (kept for the most recent images)."""
        snap = self.snapshot
        record = snap.record(image_id)
        key = (image_id, snap.identity(image_id))
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        blob = _thumbnail(self._read(record))
        with self._lock:
            self._thumbs[key] = blob
            while len(self._thumbs) > _THUMBNAILS_KEPT:
                self._thumbs.popitem(last=False)
        return blob

    def _read(self, record: Record) -> bytes:
        """An image's bytes through its source; a folder's file only where it really lies inside the folder."""
        if self.source is None:
            raise NotServed("this server has no database to read images from", 404)
        if self.root is not None:
            target = os.path.realpath(self.root / record.locator)
            if os.path.commonpath([target, str(self.root)]) != str(self.root):
                raise NotServed(f"image {record.id} points outside the database: not served", 403)
            try:
                with open(target, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise NotServed(f"image {record.id} cannot be read: {exc.strerror or exc}", 404) from None
        try:
            return self.source.read_bytes(record)
        except (OSError, AutotuneError, KeyError, IndexError, ValueError) as exc:
            raise NotServed(f"image {record.id} cannot be read: {exc}", 404) from None


def _precision(recipe: str) -> str:
    """The numeric precision a recipe's CPU backend computes in, in words (e.g. int8, bf16, fp32)."""
    text = recipe.split("@")[0]
    for word in ("int8", "bf16", "fp16"):
        if word in text:
            return word
    return "fp32"


def _content_type(data: bytes) -> str:
    """The image's MIME type from its first bytes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # not an image PIL knows: sent as bytes, never interpreted by the browser as a page
        return "application/octet-stream"


def _thumbnail(data: bytes) -> bytes:
    """A JPEG of at most THUMBNAIL_PX a side."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a reduced scale
            small = img.convert("RGB")
            small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=85)
            return out.getvalue()
    except Exception as exc:  # a corrupt file: the API says so in one line
        raise NotServed(f"image cannot be decoded: {type(exc).__name__}", 404) from None
