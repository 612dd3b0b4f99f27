"""`edgeprune train`: a thin Typer shell over `edgeprune.jobs.train.train_model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeprune import console
from edgeprune.cli.options import (
    DataDirOpt,
    DatasetOpt,
    InputSizeOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    SeedOpt,
    WeightsOpt,
)


def train(
    model: ModelOpt = "democnn",
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("model.pt"),
    weights: WeightsOpt = None,
    dataset: DatasetOpt = "fashion-mnist",
    data_dir: DataDirOpt = None,
    input_size: InputSizeOpt = None,
    epochs: Annotated[float, typer.Option(help="training epochs")] = 20,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle)")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model from scratch (or from --weights) and save an edgeprune checkpoint."""
    console.set_quiet(quiet)
    from edgeprune.jobs.train import train_model

    result = train_model(model=model, out=out, weights=weights, dataset=dataset,
                         data_dir=data_dir, input_size=input_size, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"saved {out}: test top-1 {result['test_acc'] * 100:.2f}% after "
                   f"{result['epochs']} epochs in {result['wall_s']:.0f} s")
