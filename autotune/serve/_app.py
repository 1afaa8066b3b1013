"""The HTTP side: a Starlette app over a :class:`SearchService` (JSON API, images by id, the search page).

Every error is a JSON object ``{"error": "<one line>"}`` with a 4xx status (a 500 says only that the server
failed, and logs one line); no route takes a path from the request, only integer ids the index holds.
Concurrent searches are answered together: while one batch runs, the next requests queue, and the whole queue
becomes the next batch (one text-tower pass and one index pass), so a lone client waits for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autotune.progress import Log, quiet
from autotune.serve._service import Answer, NotServed, SearchService

MAX_BODY_BYTES = 64 * 1024
MAX_QUERIES = 64  # per POST
MAX_QUERY_CHARS = 2000
MAX_BATCH = 64  # texts per text-tower pass across requests
_ID = re.compile(r"[0-9]{1,18}")
_STATIC = {  # the page's own files, by name: nothing else is ever read from disk for a URL
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class BadRequest(Exception):
    """A request the API refuses: a one-line reason and its 4xx status."""

    def __init__(self, reason: str, status: int = 400) -> None:
        """Keep the reason and status."""
        super().__init__(reason)
        self.status = status


@dataclass
class _Pending:
    """One request's texts waiting for the next batch."""

    texts: list[str]
    k: int
    done: asyncio.Future[list[Answer]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Gathers concurrent requests into batches for the service, one batch at a time, in a worker thread."""

    def __init__(self, service: SearchService) -> None:
        """No task runs until the first request."""
        self.service = service
        self.queue: asyncio.Queue[_Pending] | None = None
        self.task: asyncio.Task[None] | None = None
        # Every batch runs on this one thread: OpenMP keeps a team of threads per calling thread, so torch called
        # from a pool's changing threads would start teams that compete for the same cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")

    async def submit(self, texts: list[str], k: int) -> list[Answer]:
        """Answer one request's texts (in a batch with whatever else is waiting)."""
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._run())
        item = _Pending(texts, k)
        await self.queue.put(item)
        return await item.done

    async def _run(self) -> None:
        """Take everything queued (up to MAX_BATCH texts) and answer it as one batch, forever."""
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].texts)
            while not self.queue.empty() and size < MAX_BATCH:
                item = self.queue.get_nowait()
                batch.append(item)
                size += len(item.texts)
            try:
                self.service.refresh()
                requests = [(p.texts, p.k) for p in batch]
                loop = asyncio.get_running_loop()
                answers = await loop.run_in_executor(self.executor, self.service.search_many, requests)
                for p, a in zip(batch, answers, strict=True):
                    if not p.done.done():
                        p.done.set_result(a)
            except Exception as exc:  # noqa: BLE001 - each waiting request gets the failure, the loop goes on
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)

    async def close(self) -> None:
        """Stop the batch task (at shutdown)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Api:
    """The routes' handlers over one service and its batcher."""

    def __init__(self, service: SearchService, log: Log) -> None:
        """Keep the service; searches go through one :class:`Batcher`."""
        self.service, self.log = service, log
        self.batcher = Batcher(service)

    async def search_get(self, request: Request) -> Response:
        """``GET /api/search?q=...&k=9``: one query."""
        params = request.query_params
        text = _query_text(params.get("q"))
        k = _k(params.get("k"), self.service.size())
        answers = await self.batcher.submit([text], k)
        return _json(answers[0].to_dict(), headers=_server_timing(answers[0]))

    async def search_post(self, request: Request) -> Response:
        """``POST /api/search`` with ``{"queries": [...], "k": 9}``: several queries, embedded as one batch."""
        body = await _body(request)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest('the body is not JSON: send {"queries": ["..."], "k": 9}') from None
        if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
            raise BadRequest('the body must be a JSON object with a "queries" list')
        queries = data["queries"]
        if not queries:
            raise BadRequest('"queries" is empty: give at least one query')
        if len(queries) > MAX_QUERIES:
            raise BadRequest(f"too many queries: {len(queries)} (at most {MAX_QUERIES} per request)")
        texts = [_query_text(q if isinstance(q, str) else None) for q in queries]
        k = _k(data.get("k"), self.service.size())
        answers = await self.batcher.submit(texts, k)
        return _json([a.to_dict() for a in answers], headers=_server_timing(answers[0]))

    async def image(self, request: Request) -> Response:
        """``GET /api/images/{id}``: the original bytes."""
        data, kind = await asyncio.to_thread(self.service.image, _image_id(request.path_params["image_id"]))
        return Response(data, media_type=kind, headers=_SECURITY_HEADERS)

    async def thumbnail(self, request: Request) -> Response:
        """``GET /api/thumbnails/{id}``: a small JPEG."""
        data = await asyncio.to_thread(self.service.thumbnail, _image_id(request.path_params["image_id"]))
        return Response(data, media_type="image/jpeg", headers=_SECURITY_HEADERS)

    async def info(self, _request: Request) -> Response:
        """``GET /api/info``."""
        self.service.refresh()
        return _json(self.service.info())

    async def page(self, _request: Request) -> Response:
        """``GET /``: the search page (its script reads ``?q=`` and draws the grid)."""
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        """``GET /static/{name}``: only the page's own files."""
        name = request.path_params["name"]
        if name not in _STATIC:
            raise BadRequest(f"no such file: {name[:80]}", 404)
        return Response(_asset(name), media_type=_STATIC[name], headers=_SECURITY_HEADERS)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        """Anything unexpected: one line in the log, a one-line 500, never a traceback to the client."""
        self.log(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return _json({"error": f"the server failed on this request ({type(exc).__name__})"}, 500)


async def _bad_request(_request: Request, exc: Exception) -> Response:
    """A refused request: its one line and status."""
    return _json({"error": str(exc)}, getattr(exc, "status", 400))


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405/413..., as JSON."""
    assert isinstance(exc, HTTPException)
    reason = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return _json({"error": reason}, exc.status_code)


def build_app(service: SearchService, *, log: Log | None = None) -> Starlette:
    """The Starlette app serving ``service``: API routes, the search page and its two static files.

    Example:
        >>> import uvicorn
        >>> uvicorn.run(build_app(service), host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    api = _Api(service, log or quiet)
    routes = [
        Route("/", api.page),
        Route("/api/search", api.search_get, methods=["GET"]),
        Route("/api/search", api.search_post, methods=["POST"]),
        Route("/api/images/{image_id}", api.image),
        Route("/api/thumbnails/{image_id}", api.thumbnail),
        Route("/api/info", api.info),
        Route("/static/{name}", api.static),
    ]
    handlers = {BadRequest: _bad_request, NotServed: _bad_request, HTTPException: _http_error,
                Exception: api.server_error}  # fmt: skip
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=_lifespan(api.batcher))
    app.state.batcher = api.batcher
    return app


def _lifespan(batcher: Batcher) -> Any:
    """Start-up does nothing; shutdown stops the batch task."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        """The app's life."""
        yield
        await batcher.close()

    return lifespan


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response with the house headers."""
    return JSONResponse(data, status_code=status, headers=_SECURITY_HEADERS | (headers or {}))


def _server_timing(answer: Answer) -> dict[str, str]:
    """A ``Server-Timing`` header: the text tower's and the index's milliseconds for the batch it was in."""
    t = answer.timing
    if not t:
        return {}
    return {"Server-Timing": f'text;dur={t["text"]:.2f}, index;dur={t["index"]:.2f}, batch;desc="{int(t["batch"])}"'}


def _query_text(raw: str | None) -> str:
    """A query's text, stripped; empty, whitespace-only, missing or huge ones refused."""
    if raw is None:
        raise BadRequest("missing query: give ?q=some+text (or a list of strings in \"queries\")")
    text = raw.strip()
    if not text:
        raise BadRequest("empty query: give a non-empty text")
    if len(text) > MAX_QUERY_CHARS:
        raise BadRequest(f"query too long: {len(text):,} characters (at most {MAX_QUERY_CHARS:,})", 413)
    return text


def _k(raw: Any, size: int) -> int:
    """The number of results asked for: an integer from 1 to the index's size."""
    if raw is None:
        return min(9, size)
    try:
        k = int(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
    except ValueError:
        k = None
    if k is None:
        raise BadRequest(f"k must be an integer, got {str(raw)[:40]!r}")
    if not 1 <= k <= size:
        raise BadRequest(f"k must be between 1 and {size:,} (the images in the index), got {k}")
    return k


def _image_id(raw: str) -> int:
    """An image id from the URL: digits only (images are named by their index id, never by a path)."""
    if not _ID.fullmatch(raw):
        raise BadRequest("an image is named by its integer id from a search result, not by a path", 404)
    return int(raw)


async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES (announced or not)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadRequest(f"body too large (at most {MAX_BODY_BYTES // 1024} KB)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"body too large (at most {MAX_BODY_BYTES // 1024} KB)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _asset(name: str) -> bytes:
    """One of the page's files, from the package."""
    return resources.files("autotune.serve").joinpath("static", name).read_bytes()
