"""`autotune serve` as a library call: bring the index up to date, load it and the text tower once, serve."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from autotune.data.records import ImageSource
from autotune.data.sources import open_source
from autotune.defaults import DEFAULT_MODEL, default_dataset
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError, DataError
from autotune.progress import Log, ProgressFactory, quiet
from autotune.retrieval import choose_profile, existing_index, index_folder, update_index
from autotune.serve._app import build_app
from autotune.serve._service import SearchService

DEFAULT_PORT = 8765
_PROFILE_CHECK_S = 5.0


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """One server as a user asks for it: the database, model and profile as for ``retrieve``, and where to listen.

    ``update`` brings the index up to date first, exactly as ``retrieve`` would; without it the index is used
    as it stands (and must exist). ``port`` 0 takes a free port (the log line names it).

    Example:
        >>> opts = ServeOptions(dataset="data/", port=0)
        >>> serve(opts)  # doctest: +SKIP
    """

    dataset: str | None = None
    model: str | None = None
    profile: str = "auto"
    index_dir: Path | None = None
    image_column: str | None = None
    split: str | None = None
    index_dtype: str = "float16"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    update: bool = True

    def validate(self) -> ServeOptions:
        """Return self, or raise :class:`ConfigError` naming the first impossible setting."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if not self.host.strip():
            raise ConfigError("--host is empty: give an address such as 127.0.0.1")
        return self


def open_service(
    options: ServeOptions,
    *,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
    notice: Log | None = None,
) -> SearchService:
    """The search service of ``options``: the index brought up to date (unless ``update`` is off), loaded.

    Raises :class:`ConfigError` in one line when ``update`` is off and there is no complete index.
    """
    opts = options.validate()
    say = log or quiet
    model = opts.model or DEFAULT_MODEL
    config, profile_id = choose_profile(opts.profile, model, log=say, notice=notice or quiet)
    if opts.update:
        dataset = opts.dataset or str(default_dataset(progress=progress))
        source: ImageSource | None = open_source(dataset, opts.image_column, opts.split)
        index = update_index(
            dataset, model, config, index_dir=opts.index_dir, dtype=opts.index_dtype, image_column=opts.image_column,
            split=opts.split, progress=progress, log=say, profile=profile_id,
        )  # fmt: skip
        path = index.path
    else:
        source, path = _existing(opts, model, config)
    profile = {"id": profile_id, "config": config.describe()}
    service = SearchService(path, model, source, profile=profile, log=say)
    service.current_folder = _current_folder(opts, model, source, path)
    return service


def _existing(opts: ServeOptions, model: str, config: EngineConfig) -> tuple[ImageSource | None, Path]:
    """With ``--no-update``: the index as it stands and its database (the one the index names, by default)."""
    source: ImageSource | None = None
    if opts.dataset is not None or opts.index_dir is None:
        source = open_source(opts.dataset or str(default_dataset()), opts.image_column, opts.split)
    path = opts.index_dir
    if path is None:
        assert source is not None
        path = index_folder(source, model, config, opts.split)
    meta = existing_index(path, model).read_meta()  # complete and of this model, or one line
    if source is None and meta is not None:
        with contextlib.suppress(DataError):
            source = open_source(meta.dataset, opts.image_column, opts.split)
    return source, Path(path)


def _current_folder(
    opts: ServeOptions, model: str, source: ImageSource | None, started: Path
) -> Callable[[], str | None]:
    """A check for /api/info: a note when the profile in use now keys another index folder than the served one.

    Profiles change rarely and reading them costs milliseconds, so the answer is kept for a few seconds.
    """
    kept: list[tuple[float, str | None]] = []

    def check() -> str | None:
        """None while the served index is the one the profile in use would build."""
        if opts.index_dir is not None or source is None or opts.profile != "auto":
            return None
        if kept and time.monotonic() - kept[0][0] < _PROFILE_CHECK_S:
            return kept[0][1]
        note = None
        with contextlib.suppress(ConfigError):
            config, profile_id = choose_profile("auto", model)
            folder = index_folder(source, model, config, opts.split)
            if folder != started:
                note = (
                    f"the profile in use now ({profile_id or 'safe default'}, {config.describe()}) keys another "
                    f"index ({folder}); this server keeps answering from the index it started with: restart it "
                    "to switch"
                )
        kept[:] = [(time.monotonic(), note)]
        return note

    return check


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); a busy or bad address is one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    # The protocol number matters: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
    # without it a keep-alive client waits 40 ms (delayed ACK) for the second write of every response.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by Ctrl-C or SIGTERM as its normal end.

    uvicorn raises the signal again after its graceful shutdown, which reaches asyncio's own Ctrl-C handler
    and prints a traceback; here the signal only asks the server to stop (a second Ctrl-C forces it).
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM set the exit flags; the previous handlers come back afterwards."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def exposure_warning(host: str) -> str | None:
    """The one warning line for an address beyond loopback (None for loopback)."""
    if is_loopback(host):
        return None
    return (
        f"warning: listening on {host}, beyond this machine: the server has no authentication, and anyone who can "
        "reach it can search the index and read its images"
    )


def serve(
    options: ServeOptions,
    *,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
    notice: Log | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``options`` until Ctrl-C or SIGTERM (a clean stop: the port is closed, nothing is left running).

    ``ready`` receives the base URL once the socket listens (the log also says it).
    """
    say, tell = log or quiet, notice or quiet
    opts = options.validate()
    sock = bind(opts.host, opts.port)  # before the index work: a busy port fails at once
    try:
        service = open_service(opts, progress=progress, log=say, notice=tell)
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        warning = exposure_warning(opts.host)
        if warning:
            tell(warning)
        say(f"serving {service.size():,} images ({service.key.model}, {service.key.recipe}) on {url}  (Ctrl-C to stop)")
        if ready is not None:
            ready(url)
        app = build_app(service, log=say)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        try:
            _Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # the signal came while the server was still starting (before its own handlers): a stop all the same
        say("server stopped")
    finally:
        sock.close()
