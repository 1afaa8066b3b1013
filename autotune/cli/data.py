"""Commands that make or describe the inputs: the generated corpus, the offline-trained model, the machine, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autotune import console
from autotune.cli.options import JsonOpt, SplitOpt
from autotune.data import make_dataset
from autotune.demo import run_demo
from autotune.machine import detect_machine


def make_dataset_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (created; must be empty or absent).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bytes.")] = 0,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="files (OUT/<label>/<id>.jpg), webdataset (tar shards in OUT), inat (OUT is an iNaturalist "
            "split with its JSON) or hf (a save_to_disk dataset). The same images in each.",
        ),
    ] = "files",
    shard_images: Annotated[int, typer.Option("--shard-images", min=1, help="Images per shard (webdataset).")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Generate an iNaturalist-2021-train-mini-like corpus of JPEGs from photographs shipped by scikit-image.

    Each image is a random crop, flip, rescale and colour jitter of one of the source photographs, saved with
    long side 500 px and JPEG quality 75-95, under OUT/<label>/<id>.jpg, where the label is a species-like
    name per source photo. The folder loads both as a plain image folder and as a Hugging Face imagefolder.
    --format writes the same bytes as WebDataset shards, as an iNaturalist split or as a save_to_disk
    dataset instead; OUT is then a usable --dataset too.

    Cost, measured on 2 cores: about 38 KB per image (500,000 images: about 19 GB) and roughly
    400 images/s with both cores (500,000 images: about 20 minutes).
    """
    summary = make_dataset(
        out, n=n, seed=seed, progress=console.progress_for(not as_json), format=fmt, shard_images=shard_images
    )
    console.show(summary, "make-dataset", as_json)


def make_model_cmd(
    dataset: Annotated[Path, typer.Option("--dataset", help="Generated corpus to train on (autotune make-dataset).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed and data give the same weights.")] = 0,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Wall-clock cap; stopping early on it makes the result machine-dependent."),
    ] = None,
    split: SplitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a small CLIP contrastively on a generated corpus, so rankings mean something offline.

    The result is a normal transformers CLIP checkpoint (safetensors + processor): pass it with --model PATH
    to any command. It knows only the corpus's 17 labels ("a photo of {label}").
    """
    from autotune.models.train import train_model  # imports torch: not for --help

    summary = train_model(
        dataset, out, seed=seed, minutes=minutes, progress=console.progress_for(not as_json), split=split
    )
    console.show(summary, "make-model", as_json)


def machine_cmd(as_json: JsonOpt = False) -> None:
    """This machine's fingerprint: CPU, cores, memory, GPUs, torch/CUDA versions, and its machine id."""
    data = detect_machine().to_dict()
    data["gpus"] = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in data["gpus"]) or "none"
    data["cpu_flags"] = " ".join(data["cpu_flags"])
    console.show(data, "machine", as_json)


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes its results.")] = Path("demo-output"),
    trials: Annotated[int, typer.Option("--trials", min=1, help="Study trials.")] = 4,
) -> None:
    """The main job on the embedded defaults: generate the corpus, train the small CLIP offline (once), run a
    short study, then a retrieval with the tuned profile; prints the profile, the results and the contact sheet."""
    run_demo(console, out, trials, progress=console.bar, log=console.log)
