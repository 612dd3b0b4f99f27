"""`edgeprune report`: a thin Typer shell over `edgeprune.jobs.report.report_run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeprune import console
from edgeprune.cli.options import JsonOpt, QuietOpt

RunDirArg = Annotated[Path, typer.Argument(help="folder of an `edgeprune compress` run",
                                           show_default=False)]


def report(
    run_dir: RunDirArg,
    out: Annotated[Path | None, typer.Option(
        help="folder for report.html and report.json (default: the run folder)")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild report.html (self-contained page) and report.json from a run folder."""
    console.set_quiet(quiet)
    from edgeprune.jobs.report import report_run

    html_path, json_path = report_run(run_dir, out)
    if json_out:
        typer.echo(json.dumps({"html": str(html_path), "json": str(json_path)}, indent=2))
    else:
        typer.echo(f"wrote {html_path} ({html_path.stat().st_size / 1e3:.0f} kB) and "
                   f"{json_path.name}")
