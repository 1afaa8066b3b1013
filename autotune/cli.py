"""The `autotune` command line: one table of commands, each a thin handler over the public API.

Heavy imports (torch, transformers) happen inside handlers so that `--help` stays instant.
User mistakes raise :class:`autotune.errors.AutotuneError`; :func:`main` prints them as one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from autotune.errors import AutotuneError

app = typer.Typer(
    name="autotune",
    help="Auto-tuning performance harness for CLIP text-to-image retrieval.\n\n"
    "Typical flow: `autotune make-dataset` (or bring your own images), `autotune study` to tune the scan "
    "engine for this machine, then `autotune retrieve \"a photo of ...\"`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: measured side by side in one run, printed as ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout (for scripts).")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="CLIP model: a hub id (online or cached), a local directory, or `synthetic:clip-vit-base-patch32` "
        "(offline stand-in with ViT-B/32's exact architecture and random weights) / `synthetic:tiny`.",
    ),
]
DatasetOpt = Annotated[
    Path,
    typer.Option(
        "--dataset",
        help="Image database: a folder of images (walked recursively) or a Hugging Face dataset "
        "(save_to_disk folder, parquet or imagefolder folder).",
    ),
]
ImageColumnOpt = Annotated[
    str | None, typer.Option("--image-column", help="Image column of a Hugging Face dataset (detected if omitted).")
]


def _out(payload: dict[str, Any], title: str, as_json: bool) -> None:
    """Print a figures dictionary as JSON or as a table."""
    from autotune import report

    if as_json:
        report.emit_json(payload)
    else:
        report.print_figures(title, payload)


# ---------------------------------------------------------------------------------------------- data


@app.command("make-dataset")
def make_dataset_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (created; must be empty or absent).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Generate an iNaturalist-2021-train-mini-like corpus of JPEGs from photographs shipped by scikit-image.

    Each image is a random crop, flip, rescale and colour jitter of one of the source photographs, saved with
    long side 500 px and JPEG quality 75-95, under OUT/<label>/<id>.jpg, where the label is a species-like
    name per source photo. The folder loads both as a plain image folder and as a Hugging Face imagefolder.

    Cost, measured on 2 cores: about 38 KB per image (500,000 images: about 19 GB) and roughly
    400 images/s with both cores (500,000 images: about 20 minutes).
    """
    from autotune.data import make_dataset

    summary = make_dataset(out, n=n, seed=seed, progress=not as_json)
    _out(summary, "make-dataset", as_json)


@app.command("make-model")
def make_model_cmd(
    dataset: Annotated[Path, typer.Option("--dataset", help="Generated corpus to train on (autotune make-dataset).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed and data give the same weights.")] = 0,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Wall-clock cap; stopping early on it makes the result machine-dependent."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a small CLIP contrastively on a generated corpus, so rankings mean something offline.

    The result is a normal transformers CLIP checkpoint (safetensors + processor): pass it with --model PATH
    to any command. It knows only the corpus's 17 labels ("a photo of {label}").
    """
    from autotune.models.train import train_model

    _out(train_model(dataset, out, seed=seed, minutes=minutes, progress=not as_json), "make-model", as_json)


# ------------------------------------------------------------------------------------------- benches


@bench_app.command("preprocess")
def bench_preprocess_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Images to preprocess through each path.")] = 200,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Image folder/dataset (default: a generated corpus).")
    ] = None,
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    as_json: JsonOpt = False,
) -> None:
    """Reference (CLIPImageProcessor) vs fast preprocessing: images/s per core, ratio, and fidelity.

    Fidelity is the pixel difference (normalised units) and the cosine between embeddings of the same image
    through both paths, raw and after subtracting the corpus mean embedding.
    """
    from autotune.bench.preprocess import bench_preprocess

    _out(bench_preprocess(n=n, dataset=dataset, model=model, progress=not as_json), "bench preprocess", as_json)


@bench_app.command("quality")
def bench_quality_cmd(
    model: Annotated[str, typer.Option("--model", help="Model to evaluate (a trained make-model folder).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="The corpus the model was trained on (for labels).")],
    n: Annotated[int, typer.Option("--n", min=17, help="Held-out images to generate (another seed).")] = 340,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out images.")] = 12345,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot label accuracy and per-label precision@9 on held-out images (generated with another seed)."""
    from autotune.bench.quality import bench_quality

    _out(bench_quality(model=model, dataset=dataset, n=n, seed=seed, progress=not as_json), "bench quality", as_json)


@bench_app.command("ladder")
def bench_ladder_cmd(
    n: Annotated[int, typer.Option("--n", min=8, help="Images scanned by every stage (the same ones).")] = 192,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Image folder/dataset (default: a generated corpus).")
    ] = None,
    model: ModelOpt = "synthetic:clip-vit-base-patch32",
    query: Annotated[str, typer.Option("--query", help="Text query.")] = "a photo of Felis catus",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size for the batched and engine stages.")] = 32,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Profile for stage 6: 'auto' (this machine's) or a file.")
    ] = "auto",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a bar chart PNG (like the paper's Fig. 10).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The paper's speed-up ladder on the same N images, in one run: baseline, batched, producers + one model,
    several models (dynamic, then static), and this machine's tuned profile when there is one.

    Every stage's clock starts with its model loaded (stages 1-2 load it before, engine stages once every
    replica reports ready); engine start-up (spawn + model load) is shown apart, with steady-state images/s. Each stage's top-9 is checked against a brute-force top-9 with
    the same preprocessing and backend; the overlap with the baseline's top-9 is information only (on the
    random-weight stand-in, scores crowd so closely that any numerical change reorders them).
    """
    from autotune import report
    from autotune.bench.ladder import run_ladder

    prof = _load_profile_opt(profile, model)
    say = None if as_json else (lambda m: report.err_console.print(f"[dim]{m}[/dim]"))
    result = run_ladder(n=n, dataset=dataset, model=model, query=query, batch=batch, profile=prof, plot=plot,
                        log=say)
    if as_json:
        report.emit_json(result)
        return
    report.print_rows(f"speed-up ladder ({result['n']} images, {result['cores']} cores, {model})", result["stages"],
                      ["stage", "seconds", "startup_s", "images_per_s", "steady_images_per_s", "speedup",
                       "exact_vs_bruteforce", "overlap_with_baseline"])
    report.print_figures("summary", {k: v for k, v in result.items() if k != "stages"})


def _load_profile_opt(profile: str | None, model: str) -> Any:
    """Resolve a --profile option: None/'none', 'auto' (this machine's, if any) or a file path."""
    if profile in (None, "none"):
        return None
    try:
        from autotune.tuner.profile import find_profile
    except ImportError:  # the tuner is optional for the ladder
        return None
    return find_profile(profile, model=model)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and return exit code 2."""
    from autotune.engine.lifecycle import terminate_as_interrupt

    terminate_as_interrupt()
    try:
        app(args=argv, standalone_mode=False)
    except AutotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, click.ClickException):
            exc.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
