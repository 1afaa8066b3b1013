"""`autotune serve`: the index and the text tower loaded once behind an HTTP API and a search page.

:func:`serve` is what the command runs; :func:`open_service` builds the :class:`SearchService` (index brought up
to date, text tower loaded) and :func:`build_app` the Starlette app over it, for embedding in another server.
"""

from __future__ import annotations

from autotune.serve._app import MAX_BODY_BYTES, MAX_QUERIES, Batcher, build_app
from autotune.serve._run import DEFAULT_PORT, ServeOptions, bind, is_loopback, open_service, serve
from autotune.serve._service import Answer, NotServed, SearchService, Snapshot, TextTower

__all__ = [
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_QUERIES",
    "Answer",
    "Batcher",
    "NotServed",
    "SearchService",
    "ServeOptions",
    "Snapshot",
    "TextTower",
    "bind",
    "build_app",
    "is_loopback",
    "open_service",
    "serve",
]
