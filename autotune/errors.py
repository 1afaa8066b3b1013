"""Error types: user mistakes become one line and exit code 2, bad images become counted skips.

Every error the user should read carries its own exit code (as click's ``ClickException`` does), so the
command line maps an exception to its code in one place. Foreign errors (OSError, a library's ValueError...)
are re-raised as the project's own at the boundary where they happen, with :func:`reraise_as`, and named in
one line with :func:`one_line`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR = 2
"""Exit code of a user mistake (bad path, bad configuration, missing model), as click's usage errors."""

INTERRUPTED = 130
"""Exit code of Ctrl-C or SIGTERM: 128 + SIGINT, what a shell reports for an interrupted command."""


class AutotuneError(Exception):
    """A user-facing error (bad path, bad config, missing model): the CLI prints it as one line.

    ``exit_code`` is the command's exit status when the error ends it (2, like a usage error); a subclass
    may set another.
    """

    exit_code: int = USER_ERROR


class ConfigError(AutotuneError):
    """An impossible or malformed configuration, refused before any work starts."""


class DataError(AutotuneError):
    """A missing, empty or unreadable image database."""


class ModelError(AutotuneError):
    """A model that cannot be found or loaded (offline and not cached, bad directory...)."""


class BadImageError(Exception):
    """One image that cannot be decoded; the engine turns it into a counted, reported skip.

    ``reason`` is a short machine-friendly tag (``corrupt``, ``truncated``, ``empty``, ``too-large``,
    ``unsupported``), ``detail`` a human sentence.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        """Keep the tag and the sentence apart; the message joins them."""
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def one_line(message: str | BaseException, limit: int = 300, *, typed: bool = False) -> str:
    """The first non-blank line of a message or of an exception's message, cut to ``limit`` characters.

    A foreign error's later lines are often a hint about an unrelated setting (torch) or a traceback
    (subprocess output), so an error the user reads keeps only the first. With ``typed`` and an exception,
    the result names the type too: ``'OSError: No space left on device'``, or just ``'OSError'`` when
    the message says nothing.

    Example:
        >>> one_line(ValueError("bad value\\nhint: set FOO"), typed=True)
        'ValueError: bad value'
    """
    text = str(message)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    if typed and isinstance(message, BaseException):
        name = type(message).__name__
        return f"{name}: {first}" if first else name
    return first


@contextmanager
def reraise_as(
    error: type[AutotuneError],
    context: str,
    *foreign: type[BaseException],
    typed: bool = False,
) -> Iterator[None]:
    """Re-raise ``foreign`` errors (default: any ``Exception``) as ``error("<context>: <first line>")``.

    The one boundary where a library's exception becomes the project's own, so the command line shows it
    as one line with the right exit code; the original stays chained as ``__cause__`` for debugging. The
    project's own errors pass through untouched.

    Example:
        >>> with reraise_as(ConfigError, "--config must be a JSON object", ValueError):
        ...     json.loads("{")
        Traceback (most recent call last):
        autotune.errors.ConfigError: --config must be a JSON object: Expecting property name ...
    """
    caught = foreign or (Exception,)
    try:
        yield
    except AutotuneError:
        raise
    except caught as exc:
        raise error(f"{context}: {one_line(exc, typed=typed)}") from exc
