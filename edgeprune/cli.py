"""The `edgeprune` command: a thin Typer shell over the library's public functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeprune import console
from edgeprune.errors import EdgepruneError

app = typer.Typer(help="Prune, export and benchmark PyTorch image classifiers for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="demo | zoo name (resnet20) | torchvision:NAME | pkg.mod:factory | "
    "path/to/model.pt")]
WeightsOpt = Annotated[Path | None, typer.Option(help="state_dict file for --model")]
DatasetOpt = Annotated[str, typer.Option(
    help="auto | fashion-mnist | demo | cifar10 | imagefolder | synthetic")]
DataDirOpt = Annotated[Path | None, typer.Option(help="folder holding the dataset's files")]
InputSizeOpt = Annotated[str | None, typer.Option(help="CxHxW, e.g. 3x32x32")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or stage messages")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a machine-readable summary")]


@app.callback()
def _root() -> None:
    """Prune, export and benchmark PyTorch image classifiers for edge devices."""


def _setup(quiet: bool) -> None:
    console.set_quiet(quiet)


@app.command()
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
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model from scratch (or from --weights) and save an edgeprune checkpoint."""
    _setup(quiet)
    from edgeprune.training import train_model

    result = train_model(model=model, out=out, weights=weights, dataset=dataset,
                         data_dir=data_dir, input_size=input_size, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"saved {out}: test top-1 {result['test_acc'] * 100:.2f}% after "
                   f"{result['epochs']} epochs in {result['wall_s']:.0f} s")


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except EdgepruneError as e:
        console.stderr.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
