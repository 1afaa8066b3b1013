"""`make demo`: the whole product on the embedded defaults, in a few minutes on 2 cores."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from autotune.cache import cache_dir
from autotune.defaults import default_dataset
from autotune.progress import Log, ProgressFactory, quiet
from autotune.retrieval import retrieve, write_outputs
from autotune.tuner.space import builtin_space_path
from autotune.tuner.study import StudyOptions, run_study

DEMO_QUERY = "a photo of Felis catus"


class DemoView(Protocol):
    """Where the demo shows what a user would see; the :mod:`autotune.console` module is one."""

    def rule(self, title: str) -> None:
        """A stage begins."""

    def echo(self, text: str) -> None:
        """One line of news."""

    def print_figures(self, title: str, figures: Mapping[str, object]) -> None:
        """A table of named figures."""

    def print_rows(
        self, title: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None
    ) -> None:
        """A table of records."""


def demo_model(dataset: Path, seed: int = 0, progress: ProgressFactory | None = None) -> Path:
    """The small CLIP trained offline on the default corpus, built once into the cache."""
    from autotune.models.train import train_model  # imports torch: only when the model must be built

    folder = cache_dir("models") / f"trained-demo-seed{seed}"
    if not (folder / "model.safetensors").is_file():
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted training: start again
        train_model(dataset, folder, seed=seed, progress=progress)
    return folder


def run_demo(
    view: DemoView,
    out: Path = Path("demo-output"),
    trials: int = 4,
    *,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
) -> None:
    """Corpus -> trained model -> short study -> retrieval with the tuned profile, shown stage by stage.

    ``view`` shows the stages, figures and results (pass :mod:`autotune.console`); ``progress`` draws the
    long tasks' bars and ``log`` receives the study's and the retrieval's news.

    Example:
        >>> from autotune import console
        >>> run_demo(console, Path("demo-output"), trials=4, progress=console.bar, log=console.log)
    """
    say = log or quiet
    t0 = time.perf_counter()
    view.rule("1/4  image database")
    data = default_dataset(progress=progress)
    view.echo(f"corpus: {data}")
    view.rule("2/4  model (small CLIP trained offline on the corpus; built once)")
    model = str(demo_model(data, progress=progress))
    view.echo(f"model: {model}")
    view.rule(f"3/4  study: {trials} trials on this machine")
    options = StudyOptions(
        device="cpu",
        space=str(builtin_space_path("cpu-quick")),  # quick set-up backends only: no torch.compile
        trials=trials,
        model=model,
        dataset=str(data),
    )
    outcome = run_study(options, log=say)
    view.print_figures("study", outcome.summary())
    view.echo(f"profile saved: {outcome.profile_path}")
    view.rule(f"4/4  retrieval: {DEMO_QUERY!r} with the tuned profile")
    result = retrieve([DEMO_QUERY], dataset=str(data), model=model, config=outcome.config, progress=progress, log=say)
    write_outputs(result, str(data), out)
    hits = result.hits[0]
    view.print_rows(
        f"top 9: {DEMO_QUERY}",
        [
            {"rank": h.rank, "id": h.id, "score": round(h.score, 4), "label": h.label or "", "path": h.path}
            for h in hits
        ],
    )
    right = sum(1 for h in hits if h.label and h.label in DEMO_QUERY)
    view.echo(
        f"{right} of {len(hits)} results carry the queried label; "
        f"{result.mode}: {result.images} images scanned, {len(result.skipped)} skipped, "
        f"query {result.query_ms:.1f} ms"
    )
    view.echo(f"contact sheet: {result.outputs.get('contact_sheet_1')}")
    view.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
