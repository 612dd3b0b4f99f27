"""The `edgeprune` command: a thin Typer shell over the jobs (`edgeprune.jobs`), one module per
command group, every shared option declared once in `options`. Nothing imports this package
back; `main` turns a mistake on the command line (`usage`), a user's mistake
(`EdgepruneError`), an operating-system error (a full or read-only disk, a missing
permission) and any other failure into one line and exit code 2 (`EDGEPRUNE_TRACEBACK=1`
shows the traceback of an unexpected failure)."""

from __future__ import annotations

import os
import sys

import typer

from edgeprune import console, interrupts
from edgeprune.cli import compress, devices, explain, export, prune, report, train, usage
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


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                         soft_wrap=True)
    sys.exit(code)


def _run(args: list[str] | None) -> int:
    """Run the app on `args` (None: the command line) without Click's own error handling;
    its exit code."""
    try:
        code = app(args=args, prog_name="edgeprune", standalone_mode=False)
    except usage.CLICK.ClickException as e:
        if usage.is_help_request(e):
            e.show()
        else:
            _fail(usage.usage_line(e), e.exit_code)
        return e.exit_code
    except typer.Abort:
        _fail("aborted", 1)
    return code if isinstance(code, int) else 0


def main(args: list[str] | None = None) -> None:
    """Entry point: run the app on `args` (default: the command line), turning every failure
    into one line and exit code 2."""
    interrupts.install()  # SIGTERM and SIGHUP unwind like Ctrl-C, and each says so
    try:
        sys.exit(_run(args))
    except EdgepruneError as e:
        _fail(str(e))
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"{e.strerror or e}{where}; check the path, its permissions and the free space")
    except Exception as e:  # noqa: BLE001 - the last line of defence for a user's terminal
        if os.environ.get("EDGEPRUNE_TRACEBACK"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _fail(f"unexpected {type(e).__name__}: {first} (EDGEPRUNE_TRACEBACK=1 shows where; "
              "please report it)")
