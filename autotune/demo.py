"""`make demo`: the whole product on the embedded defaults, in a few minutes on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path

from autotune.cache import cache_dir

DEMO_QUERY = "a photo of Felis catus"


def demo_model(dataset: Path, seed: int = 0) -> Path:
    """The small CLIP trained offline on the default corpus, built once into the cache."""
    from autotune.console import bar
    from autotune.models.train import train_model

    folder = cache_dir("models") / f"trained-demo-seed{seed}"
    if not (folder / "model.safetensors").is_file():
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        train_model(dataset, folder, seed=seed, progress=bar)
    return folder


def run_demo(out: Path = Path("demo-output"), trials: int = 4) -> None:
    """Corpus -> trained model -> short study -> retrieval with the tuned profile; print what a user would see."""
    from autotune import report
    from autotune.console import bar
    from autotune.defaults import default_dataset
    from autotune.retrieval import retrieve, write_outputs
    from autotune.tuner.space import builtin_space_path
    from autotune.tuner.study import StudyOptions, run_study

    con = report.console
    t0 = time.perf_counter()
    con.rule("1/4  image database")
    data = default_dataset(progress=bar)
    con.print(f"corpus: {data}")
    con.rule("2/4  model (small CLIP trained offline on the corpus; built once)")
    model = str(demo_model(data))
    con.print(f"model: {model}")
    con.rule(f"3/4  study: {trials} trials on this machine")
    outcome = run_study(
        StudyOptions(
            device="cpu",
            space=str(builtin_space_path("cpu-quick")),  # quick set-up backends only: no torch.compile
            trials=trials,
            model=model,
            dataset=str(data),
            validate_repeats=1,
            validate_rounds=6,
        ),
        log=lambda m: report.err_console.print(f"[dim]{m}[/dim]"),
    )
    report.print_figures("study", outcome.summary())
    con.print(f"profile saved: {outcome.profile_path}")
    con.rule(f"4/4  retrieval: {DEMO_QUERY!r} with the tuned profile")
    result = retrieve(
        [DEMO_QUERY],
        dataset=str(data),
        model=model,
        config=outcome.config,
        progress=True,
        say=lambda m: report.err_console.print(f"[dim]{m}[/dim]"),
    )
    write_outputs(result, str(data), out)
    report.print_rows(
        f"top 9: {DEMO_QUERY}",
        [
            {"rank": h.rank, "id": h.id, "score": round(h.score, 4), "label": h.label or "", "path": h.path}
            for h in result.hits[0]
        ],
    )
    right = sum(1 for h in result.hits[0] if h.label and h.label in DEMO_QUERY)
    con.print(
        f"{right} of {len(result.hits[0])} results carry the queried label; "
        f"{result.mode}: {result.images} images scanned, {len(result.skipped)} skipped, "
        f"query {result.query_ms:.1f} ms"
    )
    con.print(f"contact sheet: {result.outputs.get('contact_sheet_1')}")
    con.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
