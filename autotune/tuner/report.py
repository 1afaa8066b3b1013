"""Reading a finished study: top configurations, gain over the default, and optuna-dashboard (plots: ``plots``)."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import ConfigError, one_line
from autotune.progress import Log, quiet
from autotune.tuner.plots import write_plots
from autotune.tuner.profile import REFERENCE_IMAGES
from autotune.tuner.roofline import roofline_share
from autotune.tuner.storage import (
    check_exists,
    complete_trials,
    default_storage,
    distinct_top,
    load_study,
    state_counts,
    trial_value,
)

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# Fields of a top-configuration row shown in its block's first lines; the rest are the trial's parameters.
_ROW_FIELDS = ("trial", "images_per_s", "gain_over_default", "config", "bottleneck", "startup_s")


def _median_with(rechecks: dict[str, list[float]], trial: FrozenTrial) -> float:
    """A trial's value together with its interleaved re-measurements, by median."""
    return float(statistics.median([*rechecks.get(str(trial.number), []), trial_value(trial)]))


@dataclass
class _Figures:
    """The default's and the best's images/s (rechecked where the study rechecked them), and the gain."""

    default: FrozenTrial | None
    default_value: float | None
    best: FrozenTrial | None
    best_value: float | None

    def gain(self, value: float | None) -> float | None:
        """``value`` over the default's images/s, or None when either is missing."""
        return round(value / self.default_value, 3) if value and self.default_value else None


def _figures(study: Study, complete: Sequence[FrozenTrial]) -> _Figures:
    """The default and the best: the study's recorded pick (with its validated figure) if any, else the fastest."""
    rechecks = {str(k): [float(x) for x in v] for k, v in (study.user_attrs.get("rechecks") or {}).items()}
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    default_value = _median_with(rechecks, default) if default is not None else None
    picked = study.user_attrs.get("best") or {}
    best = next((t for t in complete if t.number == picked.get("trial")), None)
    best_value: float | None = None
    if best is not None:
        best_value = float(picked.get("images_per_s", trial_value(best)))
    elif complete:
        best = max(complete, key=trial_value)
        best_value = trial_value(best)
    return _Figures(default, default_value, best, best_value)


def _top_rows(complete: Sequence[FrozenTrial], figures: _Figures, top: int) -> list[dict[str, Any]]:
    """The ``top`` distinct configurations, best first, with their figures and parameters."""
    return [
        {
            "trial": t.number,
            "images_per_s": round(trial_value(t), 3),
            "gain_over_default": figures.gain(trial_value(t)),
            "config": t.user_attrs.get("config", ""),
            "bottleneck": t.user_attrs.get("bottleneck", ""),
            "startup_s": round(float(t.user_attrs.get("startup_s") or 0.0), 3),
            **t.params,
        }
        for t in distinct_top(complete, top)
    ]


def study_report(
    study_name: str | None = None, storage: str | None = None, plots: Path | None = None, top: int = 5
) -> dict[str, Any]:
    """Summarise a study: trial counts, the default's and the best's images/s, the top configurations, plots.

    The default study is this machine's most recent one (else the most recent of all). ``images_per_s`` of
    the best and of the default include the study's interleaved re-measurements (median). With ``plots``,
    PNG files are written there and listed under ``"plots"``. :func:`top_text` renders ``"top"`` for a
    terminal.

    Example:
        >>> data = study_report(plots=Path("plots"))
        >>> data["speedup_over_default"], data["top"][0]["config"]
    """
    url = storage or default_storage(create=False)
    study = load_study(url, study_name)
    trials = list(study.get_trials(deepcopy=False))
    counts = state_counts(trials)
    complete = complete_trials(trials)
    fig = _figures(study, complete)
    best, best_value = fig.best, fig.best_value
    data: dict[str, Any] = {
        "study": study.study_name,
        "storage": url,
        "machine": study.user_attrs.get("machine", ""),
        "trials": counts,
        "trials_total": len(trials),
        "trials_summary": ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
        "default_trial": fig.default.number if fig.default is not None else None,
        "default_images_per_s": round(fig.default_value, 3) if fig.default_value is not None else None,
        "best_trial": best.number if best is not None else None,
        "best_config": best.user_attrs.get("config", "") if best is not None else None,
        "best_images_per_s": round(best_value, 3) if best_value is not None else None,
        "speedup_over_default": fig.gain(best_value),
        "predicted_seconds_500k": round(REFERENCE_IMAGES / best_value, 1) if best_value else None,
        "top": _top_rows(complete, fig, top),
        # Where the last run of the study spent its time, and what it decided about its pick.
        "phase_seconds": study.user_attrs.get("phase_seconds") or {},
        "decision": study.user_attrs.get("decision", ""),
    }
    machine_id, arch = study.user_attrs.get("machine_id"), study.user_attrs.get("arch")
    if best_value and machine_id and arch:
        # The best figure as a share of this machine's measured ceiling (`autotune bench roofline`), if stored.
        data.update(roofline_share(best_value, machine_id, arch))
    if plots is not None:
        written, skipped = write_plots(study, trials, complete, Path(plots), fig.default)
        data["plots"] = [str(p) for p in written]
        data["plots_skipped"] = skipped
    return data


def top_text(rows: Sequence[Mapping[str, Any]], width: int = 80) -> str:
    """The top configurations as one block per configuration, every line at most ``width`` characters.

    A table of a dozen columns does not fit a terminal; a block does: a headline with the figures, then the
    configuration, the bottleneck and the parameters, wrapped. Every field of the row appears.

    Example:
        >>> print(top_text(study_report()["top"]))
    """
    blocks = []
    for rank, row in enumerate(rows, 1):
        gain = row.get("gain_over_default")
        head = f"#{rank}  trial {row.get('trial')}: {_number(row.get('images_per_s'))} images/s"
        head += f", x{gain:g} over the default" if gain is not None else ""
        head += f", start-up {_number(row.get('startup_s'))} s"
        params = "  ".join(f"{k}={v}" for k, v in row.items() if k not in _ROW_FIELDS)
        lines = textwrap.wrap(head, width, subsequent_indent="    ")
        for label, text in (("config", row.get("config")), ("bottleneck", row.get("bottleneck")), ("params", params)):
            if text:
                lines += textwrap.wrap(f"{label}: {text}", width, initial_indent="    ", subsequent_indent="      ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _number(value: Any) -> str:
    """A figure for a headline: numbers with their useful digits, anything else as it is."""
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


# -------------------------------------------------------------------------------------------- dashboard


def dashboard_app(storage: str | None = None) -> Any:
    """The optuna-dashboard WSGI application for a study storage (default: the studies/ SQLite file)."""
    import optuna_dashboard

    url = check_exists(storage or default_storage(create=False))
    try:
        return optuna_dashboard.wsgi(url)
    except Exception as exc:
        raise ConfigError(f"cannot open study storage {url}: {one_line(exc)}") from None


def serve_dashboard(storage: str | None, port: int, host: str = "127.0.0.1", log: Log | None = None) -> None:
    """Serve optuna-dashboard for the storage on http://HOST:PORT/dashboard until Ctrl-C.

    ``log`` receives the address once the storage is known to exist (the CLI prints it).

    Example:
        >>> serve_dashboard(None, 8080, log=print)
    """
    import optuna_dashboard

    url = check_exists(storage or default_storage(create=False))
    (log or quiet)(f"optuna-dashboard for {url}: http://{host}:{port}/dashboard  (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(url, host=host, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
