"""Reading a finished study: top configurations, gain over the default, plots, and optuna-dashboard."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError, one_line
from autotune.tuner.profile import REFERENCE_IMAGES, studies_dir

_COLOUR_BY = ("cpu_threads", "cpu_models", "gpu_models", "producers", "cpu_batch", "gpu_batch", "gpu_precision",
              "scheduling", "queue_depth", "pin_cores")


def _default_url() -> str:
    """The default storage URL (as :func:`autotune.tuner.study.default_storage`, without creating folders)."""
    return f"sqlite:///{(studies_dir() / 'autotune.db').resolve()}"


def _check_exists(url: str) -> str:
    """Refuse a SQLite URL or storage file path that does not exist (opening it would create an empty one)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).is_file():
            raise ConfigError(f"no study found in {url}: run `autotune study` first")
    elif "://" not in url and not Path(url).is_file():
        raise ConfigError(f"no study found in {url}: run `autotune study` first")
    return url


def _open_storage(url: str) -> Any:
    """A plain RDB storage for reading (no heartbeat: reading never fails anyone's trials)."""
    import optuna

    _check_exists(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}
                                          if url.startswith("sqlite") else None)
    except Exception as exc:
        raise ConfigError(f"cannot open study storage {url}: {one_line(exc)}") from None


def _pick_study(storage: Any, url: str, study_name: str | None) -> str:
    """The named study, or this machine's most recent one, or the most recent one of all."""
    studies = storage.get_all_studies()
    if not studies:
        raise ConfigError(f"no study found in {url}: run `autotune study` first")
    names = [s.study_name for s in studies]
    if study_name is not None:
        if study_name not in names:
            raise ConfigError(f"study {study_name!r} not found in {url} (studies: {', '.join(names)})")
        return study_name
    from autotune.machine import detect_machine

    machine_id = detect_machine().machine_id

    def recency(s: Any) -> tuple[float, int]:
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        return (max(starts, default=0.0), s._study_id)

    mine = [s for s in studies if s.study_name.startswith(machine_id)]
    return max(mine or studies, key=recency).study_name


def _median_with(rechecks: dict[str, list[float]], trial: Any) -> float:
    """A trial's value together with its interleaved re-measurements, by median."""
    return float(statistics.median([*rechecks.get(str(trial.number), []), float(trial.value)]))


def study_report(
    study_name: str | None = None, storage: str | None = None, plots: Path | None = None, top: int = 5
) -> dict[str, Any]:
    """Summarise a study: trial counts, the default's and the best's images/s, the top configurations, plots.

    The default study is this machine's most recent one (else the most recent of all). ``images_per_s`` of
    the best and of the default include the study's interleaved re-measurements (median). With ``plots``,
    PNG files are written there and listed under ``"plots"``.

    Example:
        >>> data = study_report(plots=Path("plots"))
        >>> data["speedup_over_default"], data["top"][0]["config"]
    """
    import optuna
    from optuna.trial import TrialState

    url = storage or _default_url()
    rdb = _open_storage(url)
    name = _pick_study(rdb, url, study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=rdb)
    trials: list[Any] = list(study.get_trials(deepcopy=False))
    counts: dict[str, int] = {}
    for t in trials:
        key = "infeasible" if t.state == TrialState.PRUNED and t.user_attrs.get("infeasible") else t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    complete: list[Any] = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    rechecks = {str(k): [float(x) for x in v] for k, v in (study.user_attrs.get("rechecks") or {}).items()}
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    default_value = _median_with(rechecks, default) if default is not None else None

    picked = study.user_attrs.get("best") or {}
    best_trial = next((t for t in complete if t.number == picked.get("trial")), None)
    if best_trial is not None:
        best_value: float | None = float(picked.get("images_per_s", best_trial.value))
    elif complete:
        best_trial = max(complete, key=lambda t: float(t.value))
        best_value = float(best_trial.value)
    else:
        best_value = None

    def gain(value: float | None) -> float | None:
        return round(value / default_value, 3) if value and default_value else None

    rows = []
    seen: set[tuple[Any, ...]] = set()
    for t in sorted(complete, key=lambda t: -float(t.value)):
        pkey = tuple(sorted(t.params.items()))
        if pkey in seen:
            continue
        seen.add(pkey)
        rows.append({
            "trial": t.number,
            "images_per_s": round(float(t.value), 3),
            "gain_over_default": gain(float(t.value)),
            "config": t.user_attrs.get("config", ""),
            "bottleneck": t.user_attrs.get("bottleneck", ""),
            "startup_s": round(float(t.user_attrs.get("startup_s") or 0.0), 3),
            **t.params,
        })
        if len(rows) == top:
            break
    data: dict[str, Any] = {
        "study": name,
        "storage": url,
        "machine": study.user_attrs.get("machine", ""),
        "trials": counts,
        "trials_total": len(trials),
        "trials_summary": ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
        "default_trial": default.number if default is not None else None,
        "default_images_per_s": round(default_value, 3) if default_value is not None else None,
        "best_trial": best_trial.number if best_trial is not None else None,
        "best_config": best_trial.user_attrs.get("config", "") if best_trial is not None else None,
        "best_images_per_s": round(best_value, 3) if best_value is not None else None,
        "speedup_over_default": gain(best_value),
        "predicted_seconds_500k": round(REFERENCE_IMAGES / best_value, 1) if best_value else None,
        "top": rows,
    }
    if plots is not None:
        written, skipped = _write_plots(study, trials, complete, Path(plots), default)
        data["plots"] = [str(p) for p in written]
        data["plots_skipped"] = skipped
    return data


# ------------------------------------------------------------------------------------------------ plots


def _values_of(trials: Sequence[Any], param: str) -> list[Any]:
    return [t.params.get(param) for t in trials]


def _numeric(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers for plotting: numbers as they are, anything else as category indices (with labels)."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def _history_plot(study: Any, trials: Sequence[Any], complete: Sequence[Any], default: Any, path: Path) -> None:
    """images/s per trial with the best so far; pruned and failed trials marked along the bottom."""
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    xs = [t.number for t in complete]
    ys = [float(t.value) for t in complete]
    ax.scatter(xs, ys, s=28, color="tab:blue", label="complete", zorder=3)
    best, best_line = float("-inf"), []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, float(t.value))
        best_line.append((t.number, best))
    if best_line:
        ax.step([b[0] for b in best_line], [b[1] for b in best_line], where="post", color="tab:red",
                label="best so far")
    if default is not None:
        ax.scatter([default.number], [float(default.value)], s=90, facecolors="none", edgecolors="black",
                   label="default (trial 0)", zorder=4)
    floor = 0.0
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get("infeasible")]
    infeasible = [t.number for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("infeasible")]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    for nums, marker, colour, label in ((pruned, "v", "tab:orange", "pruned"),
                                        (infeasible, "x", "tab:gray", "infeasible"),
                                        (failed, "X", "tab:purple", "failed")):
        if nums:
            ax.scatter(nums, [floor] * len(nums), marker=marker, color=colour, label=label, zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel("images/s")
    ax.set_title(f"optimisation history: {study.study_name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def _importance_plot(study: Any, complete: Sequence[Any], path: Path) -> str | None:
    """Parameter importances as horizontal bars; the reason when it cannot be computed."""
    import optuna
    from matplotlib.figure import Figure

    if len(complete) < 2:
        return f"needs at least 2 complete trials, the study has {len(complete)}"
    varied = [p for p in complete[0].params
              if all(p in t.params for t in complete) and len({repr(t.params[p]) for t in complete}) > 1]
    if not varied:
        return "no parameter took more than one value among the complete trials"
    try:
        importances = optuna.importance.get_param_importances(study, params=varied)
    except Exception as exc:  # too few or too similar trials for the evaluator
        return f"optuna could not compute importances: {one_line(exc) or type(exc).__name__}"
    if not importances:
        return "optuna returned no importances"
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (normalised)")
    ax.set_title(f"parameter importances ({len(complete)} complete trials)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    return None


def _scatter_plot(complete: Sequence[Any], x: str, path: Path) -> str | None:
    """images/s against one parameter, coloured by another that varies."""
    from matplotlib.figure import Figure

    pts = [t for t in complete if x in t.params]
    if not pts:
        return f"no complete trial has parameter {x}"
    colour = next((c for c in _COLOUR_BY if c != x and all(c in t.params for t in pts)
                   and len({repr(t.params[c]) for t in pts}) > 1), None)
    xs, xlabels = _numeric(_values_of(pts, x))
    ys = [float(t.value) for t in pts]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    groups = sorted({repr(t.params[colour]) for t in pts}) if colour is not None else []
    if colour is not None and len(groups) <= 10:
        # A few values: one colour each, with a legend.
        by_value = sorted({t.params[colour] for t in pts}, key=lambda v: (str(type(v)), v))
        for i, value in enumerate(by_value):
            sel = [k for k, t in enumerate(pts) if t.params[colour] == value]
            ax.scatter([xs[k] for k in sel], [ys[k] for k in sel], s=40, color=f"C{i}", edgecolors="black",
                       linewidths=0.4, label=f"{colour}={value}")
        ax.legend(fontsize=8)
    elif colour is not None:
        cs, _ = _numeric(_values_of(pts, colour))
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=40, edgecolors="black", linewidths=0.4)
        fig.colorbar(sc, ax=ax, label=colour)
    else:
        ax.scatter(xs, ys, s=40, color="tab:blue", edgecolors="black", linewidths=0.4)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), xlabels)
    else:
        ticks = sorted(set(xs))
        if x.endswith("batch") and min(xs) > 0 and max(xs) / min(xs) >= 4:
            ax.set_xscale("log", base=2)
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.minorticks_off()
    ax.set_xlabel(x)
    ax.set_ylabel("images/s")
    ax.set_title(f"images/s vs {x}" + (f" (colour: {colour})" if colour else ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return None


def _write_plots(
    study: Any, trials: Sequence[Any], complete: Sequence[Any], folder: Path, default: Any
) -> tuple[list[Path], dict[str, str]]:
    """Write every plot that the study's data allows; return the files and the reasons for the others."""
    # Figures are drawn with matplotlib's object API (Agg canvas): no pyplot state, no display needed.
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    path = folder / "history.png"
    _history_plot(study, trials, complete, default, path)
    written.append(path)
    path = folder / "importances.png"
    why = _importance_plot(study, complete, path)
    if why:
        skipped["importances"] = why
    else:
        written.append(path)
    batch = next((b for b in ("cpu_batch", "gpu_batch") if any(b in t.params for t in complete)), None)
    for x, fname in ((batch, f"images_per_s_vs_{batch}.png"), ("producers", "images_per_s_vs_producers.png")):
        if x is None:
            skipped["batch"] = "the study tunes no batch size"
            continue
        path = folder / fname
        why = _scatter_plot(complete, x, path)
        if why:
            skipped[x] = why
        else:
            written.append(path)
    return written, skipped


# -------------------------------------------------------------------------------------------- dashboard


def dashboard_app(storage: str | None = None) -> Any:
    """The optuna-dashboard WSGI application for a study storage (default: the studies/ SQLite file)."""
    import optuna_dashboard

    url = _check_exists(storage or _default_url())
    try:
        return optuna_dashboard.wsgi(url)
    except Exception as exc:
        raise ConfigError(f"cannot open study storage {url}: {one_line(exc)}") from None


def serve_dashboard(storage: str | None, port: int, host: str = "127.0.0.1") -> None:
    """Serve optuna-dashboard for the storage on http://HOST:PORT/dashboard until Ctrl-C."""
    import optuna_dashboard

    url = _check_exists(storage or _default_url())
    print(f"optuna-dashboard for {url}: http://{host}:{port}/dashboard  (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(url, host=host, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
