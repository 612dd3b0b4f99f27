"""`edgeprune train`: a thin Typer shell over `edgeprune.jobs.train.train_model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    AcceleratorOpt,
    DatasetOpt,
    ModelOpt,
    model_data_options,
    output_options,
    start,
    with_options,
)


@with_options(model_data_options, output_options)
def train(
    model: ModelOpt = "democnn",
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("model.pt"),
    dataset: DatasetOpt = "fashion-mnist",
    epochs: Annotated[float, bounded("epochs", "training epochs", "train")] = 20,
    lr: Annotated[float, bounded("lr", "peak learning rate (one-cycle)")] = 0.1,
    batch_size: Annotated[int, bounded("batch_size", "batch size")] = 128,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    accelerator: AcceleratorOpt = "auto",
    **options: Any,
) -> None:
    """Train a model from scratch (or from --weights) and save an edgeprune checkpoint."""
    json_out = start(options)
    from edgeprune.jobs.train import train_model

    result = train_model(model=model, out=out, dataset=dataset, epochs=epochs, lr=lr,
                         batch_size=batch_size, overwrite=overwrite,
                         accelerator_choice=accelerator, **options)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"saved {out}: test top-1 {result['test_acc'] * 100:.2f}% after "
                   f"{result['epochs']} epochs in {result['wall_s']:.0f} s")
