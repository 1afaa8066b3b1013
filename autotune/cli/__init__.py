"""The `autotune` command line: the Typer app, its command table and :func:`main` (the console script).

Commands live one module per group (:mod:`.data`, :mod:`.tuning`, :mod:`.search`, :mod:`.bench`);
:mod:`.app` registers them and maps errors to exit codes.
"""

from __future__ import annotations

from autotune.cli.app import COMMANDS, app, main

__all__ = ["COMMANDS", "app", "main"]
