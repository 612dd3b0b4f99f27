"""The `edgeprune` command: a thin Typer shell over the jobs (`edgeprune.jobs`), one module per
command group, every shared option declared once in `options`. Nothing imports this package
back; `main` turns a user's mistake (`EdgepruneError`) into one line and exit code 2."""

from __future__ import annotations

import sys

import typer

from edgeprune import console
from edgeprune.cli import compress, devices, explain, export, prune, report, train
from edgeprune.errors import EdgepruneError

app = typer.Typer(help="Prune, export and benchmark PyTorch image classifiers for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

for command in (train.train, compress.compress, export.export, devices.bench, devices.deploy,
                prune.prune, report.report, compress.sweep, explain.score, explain.explain):
    app.command()(command)
app.add_typer(devices.targets, name="targets")


@app.callback()
def _root() -> None:
    """Prune, export and benchmark PyTorch image classifiers for edge devices."""


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except EdgepruneError as e:
        console.stderr.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
