"""Options that several commands share, declared once so their help reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout (for scripts).")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="CLIP model: a hub id (online or cached), a local directory, or `synthetic:clip-vit-base-patch32` "
        "(offline stand-in with ViT-B/32's exact architecture and random weights) / `synthetic:tiny`.",
    ),
]
DatasetPathOpt = Annotated[
    Path | None, typer.Option("--dataset", help="Image folder/dataset (default: a generated corpus).")
]
ImageColumnOpt = Annotated[
    str | None, typer.Option("--image-column", help="Image column of a Hugging Face dataset (detected if omitted).")
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Splits of a Hugging Face dataset, in its syntax: `train+validation`, `train[:10%]` "
        "(default: train if present, else the first split). Folders of images have no splits.",
    ),
]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Study storage URL (default: studies/).")]
