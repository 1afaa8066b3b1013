"""A finished study's PNG plots: history, parameter importances, and images/s against batch size and producers.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot state, no display needed, and
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import one_line
from autotune.tuner.storage import trial_value

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# A scatter plot is coloured by the first of these parameters that varies among its trials.
_COLOUR_BY = (
    "cpu_threads",
    "cpu_models",
    "gpu_models",
    "producers",
    "cpu_batch",
    "gpu_batch",
    "gpu_precision",
    "scheduling",
    "queue_depth",
    "pin_cores",
)


def _values_of(trials: Sequence[FrozenTrial], param: str) -> list[Any]:
    """Each trial's value of ``param`` (None where it has none)."""
    return [t.params.get(param) for t in trials]


def _numeric(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers for plotting: numbers as they are, anything else as category indices (with labels)."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def _history_plot(
    study: Study,
    trials: Sequence[FrozenTrial],
    complete: Sequence[FrozenTrial],
    default: FrozenTrial | None,
    path: Path,
) -> None:
    """images/s per trial with the best so far; pruned and failed trials marked along the bottom."""
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    xs = [t.number for t in complete]
    ys = [trial_value(t) for t in complete]
    ax.scatter(xs, ys, s=28, color="tab:blue", label="complete", zorder=3)
    best, best_line = float("-inf"), []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, trial_value(t))
        best_line.append((t.number, best))
    if best_line:
        ax.step(
            [b[0] for b in best_line], [b[1] for b in best_line], where="post", color="tab:red", label="best so far"
        )
    if default is not None:
        ax.scatter(
            [default.number],
            [trial_value(default)],
            s=90,
            facecolors="none",
            edgecolors="black",
            label="default (trial 0)",
            zorder=4,
        )
    floor = 0.0
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get("infeasible")]
    infeasible = [t.number for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("infeasible")]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    for nums, marker, colour, label in (
        (pruned, "v", "tab:orange", "pruned"),
        (infeasible, "x", "tab:gray", "infeasible"),
        (failed, "X", "tab:purple", "failed"),
    ):
        if nums:
            ax.scatter(nums, [floor] * len(nums), marker=marker, color=colour, label=label, zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel("images/s")
    ax.set_title(f"optimisation history: {study.study_name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def _importance_plot(study: Study, complete: Sequence[FrozenTrial], path: Path) -> str | None:
    """Parameter importances as horizontal bars; the reason when it cannot be computed."""
    import optuna
    from matplotlib.figure import Figure

    if len(complete) < 2:
        return f"needs at least 2 complete trials, the study has {len(complete)}"
    varied = [
        p
        for p in complete[0].params
        if all(p in t.params for t in complete) and len({repr(t.params[p]) for t in complete}) > 1
    ]
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


def _scatter_plot(complete: Sequence[FrozenTrial], x: str, path: Path) -> str | None:
    """images/s against one parameter, coloured by another that varies."""
    from matplotlib.figure import Figure

    pts = [t for t in complete if x in t.params]
    if not pts:
        return f"no complete trial has parameter {x}"
    colour = next(
        (
            c
            for c in _COLOUR_BY
            if c != x and all(c in t.params for t in pts) and len({repr(t.params[c]) for t in pts}) > 1
        ),
        None,
    )
    xs, xlabels = _numeric(_values_of(pts, x))
    ys = [trial_value(t) for t in pts]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    groups = sorted({repr(t.params[colour]) for t in pts}) if colour is not None else []
    if colour is not None and len(groups) <= 10:
        # A few values: one colour each, with a legend.
        by_value = sorted({t.params[colour] for t in pts}, key=lambda v: (str(type(v)), v))
        for i, value in enumerate(by_value):
            sel = [k for k, t in enumerate(pts) if t.params[colour] == value]
            ax.scatter(
                [xs[k] for k in sel],
                [ys[k] for k in sel],
                s=40,
                color=f"C{i}",
                edgecolors="black",
                linewidths=0.4,
                label=f"{colour}={value}",
            )
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


def write_plots(
    study: Study,
    trials: Sequence[FrozenTrial],
    complete: Sequence[FrozenTrial],
    folder: Path,
    default: FrozenTrial | None,
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
