"""Benchmark figures as data: one JSON file per run under ``docs/benchmarks/``, and the table rendered from them.

A run file holds the ``command`` that made it, the ``commit`` it ran at, the ``date`` and the ``machine``
(``autotune machine --json``), and the command's own ``--json`` output as ``result``. ``docs/benchmarks.md`` is
rendered from those files, grouped by machine, the latest run of each command per machine shown (older runs
stay in the data only), so a figure in the docs cannot drift from the command that made it: ``make lint``
checks that the rendered file matches the data.

Example:
    >>> path = record_run(["bench", "index", "--n", "20000"], Path("docs/benchmarks"))  # doctest: +SKIP
    >>> render(Path("docs/benchmarks"))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError
from autotune.machine import detect_machine

RUNS_DIR = Path("docs/benchmarks")
RENDERED = Path("docs/benchmarks.md")
MAX_FIGURES = 14  # scalar figures shown per run; the rest stay in its file
HEADER = """# Benchmarks

Rendered from the run files in `docs/benchmarks/` by `python -m autotune.bench.runs render` (do not edit by
hand: `make lint` checks that this page matches them). Each section is one machine; each entry the latest run of
one command on it, with the commit it ran at. A command's whole output is in its run file.
"""


def _commit() -> str:
    """The checkout's commit (with ``+`` when it has uncommitted changes), or ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "autotune"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def run_file(command: str, result: Any, *, commit: str | None = None, date: str | None = None) -> dict[str, Any]:
    """A run record: the command, the commit, the date (UTC), this machine's fingerprint and the result."""
    return {
        "command": command,
        "commit": commit or _commit(),
        "date": date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": detect_machine().to_dict(),
        "result": result,
    }


def write_run(record: dict[str, Any], folder: Path = RUNS_DIR) -> Path:
    """Write a run record as ``<date>-<command slug>.json`` in ``folder``; its path."""
    slug = re.sub(r"[^a-z0-9]+", "-", record["command"].removeprefix("autotune ").lower()).strip("-")[:60]
    stamp = record["date"].replace(":", "").replace("-", "")[:15]
    path = folder / f"{stamp}-{slug}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def record_run(args: list[str], folder: Path = RUNS_DIR) -> Path:
    """Run ``autotune ARGS --json`` and keep its output as a run file (stderr passes through)."""
    cmd = [sys.executable, "-m", "autotune.cli", *args, *([] if "--json" in args else ["--json"])]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"autotune {' '.join(args)} exited with {proc.returncode}: nothing recorded")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"autotune {' '.join(args)} printed no JSON document ({exc})") from None
    return write_run(run_file("autotune " + " ".join(args), result), folder)


def _key(command: str) -> str:
    """What makes two runs the same benchmark: the whole command, options included (a 3-trial and a 30-trial
    study are two benchmarks; the same command run again replaces its entry)."""
    return " ".join(command.split())


def _figures(result: Any) -> list[tuple[str, Any]]:
    """The run's scalar figures (numbers, short strings, booleans), at most :data:`MAX_FIGURES`."""
    if not isinstance(result, dict):
        return []
    out = []
    for k, v in result.items():
        if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 80):
            out.append((k, v))
    return out[:MAX_FIGURES]


def _rows(result: Any) -> list[dict[str, Any]]:
    """A run's table, when its result has one (``rows``: a list of flat dictionaries)."""
    rows = result.get("rows") if isinstance(result, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _words(value: Any) -> str:
    """A list as space-separated words; anything else as its text."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value or "")


def load_runs(folder: Path = RUNS_DIR) -> list[dict[str, Any]]:
    """Every run file in ``folder``, oldest first; one that is not a run record is one ConfigError line."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = {"command", "commit", "date", "machine", "result"} - set(data)
        if missing:
            raise ConfigError(f"{path}: not a run file (missing {', '.join(sorted(missing))})")
        data["file"] = path.name
        runs.append(data)
    return sorted(runs, key=lambda r: r["date"])


def render(folder: Path = RUNS_DIR) -> str:
    """The Markdown page: per machine, the latest run of each benchmark with its figures."""
    runs = load_runs(folder)
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        latest.setdefault(run["machine"]["machine_id"], {})[_key(run["command"])] = run
    out = [HEADER]
    for machine_id, by_key in sorted(latest.items()):
        m = next(iter(by_key.values()))["machine"]
        out.append(f"## {machine_id}\n\n{m.get('cpu_model')}, {m.get('logical_cores')} cores, "
                   f"{m.get('memory_gb')} GB, GPUs: {_words(m.get('gpus')) or 'none'}; "
                   f"CPU flags: {_words(m.get('cpu_flags'))}\n")  # fmt: skip
        for key, run in sorted(by_key.items()):
            title = key if len(key) <= 90 else key[:87] + "..."
            out.append(f"### {title}\n\n`{run['command']}` at `{run['commit']}`, {run['date']} ([data]"
                       f"(benchmarks/{run['file']}))\n")  # fmt: skip
            figures = _figures(run["result"])
            if figures:
                out.append("| figure | value |\n|---|---|")
                out.extend(f"| {k} | {v} |" for k, v in figures)
                out.append("")
            rows = _rows(run["result"])
            if rows:
                cols = [c for c in rows[0] if all(not isinstance(r.get(c), dict | list) for r in rows)][:8]
                out.append("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
                out.extend("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows)
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``render [--check]``: write (or check) docs/benchmarks.md; ``record ARGS...``: run and keep a benchmark."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["record"] and len(args) > 1:
        print(record_run(args[1:], RUNS_DIR))
        args = ["render"]
    if args[:1] != ["render"]:
        print("usage: python -m autotune.bench.runs render [--check] | record ARGS...", file=sys.stderr)
        return 2
    text = render(RUNS_DIR)
    if "--check" in args:
        if not RENDERED.is_file() or RENDERED.read_text(encoding="utf-8") != text:
            print(f"{RENDERED} does not match {RUNS_DIR}/: run python -m autotune.bench.runs render", file=sys.stderr)
            return 1
        return 0
    RENDERED.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
