"""Error types: user mistakes become one line and exit code 2, bad images become counted skips."""

from __future__ import annotations


class AutotuneError(Exception):
    """A user-facing error (bad path, bad config, missing model): the CLI prints it as one line, exit 2."""


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
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
