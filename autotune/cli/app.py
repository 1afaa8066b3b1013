"""The `autotune` command line: one table of commands, each a thin handler over the public API, and `main`.

Handlers parse options, call one library function and print its figures (a table, or JSON with --json).
Errors carry their exit code (:class:`autotune.errors.AutotuneError`, click's usage errors), so :func:`main`
maps any of them to one line on stderr and its code in one place.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

import autotune.cli.bench as bench
import autotune.cli.bench_runs as bench_runs
import autotune.cli.data as data
import autotune.cli.search as search
import autotune.cli.tuning as tuning
from autotune.engine.lifecycle import terminate_as_interrupt
from autotune.errors import INTERRUPTED, AutotuneError

try:  # Typer 0.2x vendors click: its usage errors are not the installed click's classes
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer runs on click itself
    from click import ClickException  # type: ignore[assignment]


def _group(help_text: str) -> typer.Typer:
    """A command group; plain help formatting (see :data:`app`)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


# Plain (click) help formatting, not Rich panels: Typer's Rich panels print a value type after every option,
# flags included (`--json <bool>`, `--help <bool>`), and keep each docstring line break, so paragraphs
# broke mid-sentence. Click's formatter shows flags bare and re-flows paragraphs to the terminal width.
app = typer.Typer(
    name="autotune",
    help="Auto-tuning performance harness for CLIP text-to-image retrieval.\n\n"
    "Typical flow: `autotune make-dataset` (or bring your own images), `autotune study` to tune the scan "
    'engine for this machine, then `autotune retrieve "a photo of ..."`.',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
bench_app = _group("Benchmarks: measured side by side in one run, printed as ratios.")
profile_app = _group("Per-machine profiles saved by `autotune study`.")
index_app = _group("Embedding indexes kept by `autotune retrieve`.")

COMMANDS: list[tuple[typer.Typer, str, Callable[..., None]]] = [
    (app, "make-dataset", data.make_dataset_cmd),
    (app, "make-model", data.make_model_cmd),
    (app, "machine", data.machine_cmd),
    (app, "study", tuning.study_cmd),
    (app, "dashboard", tuning.dashboard_cmd),
    (app, "report", tuning.report_cmd),
    (app, "retrieve", search.retrieve_cmd),
    (app, "serve", search.serve_cmd),
    (app, "demo", data.demo_cmd),
    (app, "verify", tuning.verify_cmd),
    (bench_app, "preprocess", bench.bench_preprocess_cmd),
    (bench_app, "quality", bench.bench_quality_cmd),
    (bench_app, "ladder", bench.bench_ladder_cmd),
    (bench_app, "tuner", bench.bench_tuner_cmd),
    (bench_app, "index", bench_runs.bench_index_cmd),
    (bench_app, "serve", bench_runs.bench_serve_cmd),
    (bench_app, "index-update", bench_runs.bench_index_update_cmd),
    (bench_app, "index-scale", bench_runs.bench_index_scale_cmd),
    (bench_app, "first-run", bench_runs.bench_first_run_cmd),
    (bench_app, "configs", bench_runs.bench_configs_cmd),
    (bench_app, "backends", bench.bench_backends_cmd),
    (bench_app, "samplers", bench.bench_samplers_cmd),
    (bench_app, "roofline", bench.bench_roofline_cmd),
    (bench_app, "vendor", bench.bench_vendor_cmd),
    (bench_app, "gpu-check", bench_runs.bench_gpu_check_cmd),
    (bench_app, "ray", bench_runs.bench_ray_cmd),
    (profile_app, "list", tuning.profile_list_cmd),
    (profile_app, "use", tuning.profile_use_cmd),
    (profile_app, "show", tuning.profile_show_cmd),
    (profile_app, "pull", tuning.profile_pull_cmd),
    (index_app, "list", search.index_list_cmd),
    (index_app, "rm", search.index_rm_cmd),
]
"""(group, name, handler) for every command, in the order `autotune --help` lists them."""

for _group_app, _name, _handler in COMMANDS:
    _group_app.command(_name)(_handler)
app.add_typer(bench_app, name="bench")
app.add_typer(profile_app, name="profile")
app.add_typer(index_app, name="index")


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    The project's errors print as ``error: <message>`` and usage errors as click shows them, both on stderr
    with the exit code they carry (2 for a user mistake); Ctrl-C and SIGTERM print ``interrupted`` and
    return 130; a command that fails its check (``verify``) returns 1.

    Example:
        >>> main(["machine", "--json"])
        0
    """
    # transformers warns on every load that torchvision is absent (its PIL processor is our reference anyway).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    terminate_as_interrupt()
    try:
        # Out of standalone mode Typer returns, rather than raises, a handler's typer.Exit code, and turns
        # Ctrl-C into exit code 130 itself.
        code = app(args=argv, standalone_mode=False)
    except AutotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    code = code if isinstance(code, int) else 0
    if code == INTERRUPTED:
        print("interrupted", file=sys.stderr)
    return code
