"""Human output: progress bars and one-line stage messages on stderr, silenced by --quiet."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)
stdout = Console()
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def info(message: str) -> None:
    """A one-line stage message (what was made, how big, how long)."""
    if not _state["quiet"]:
        stderr.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A one-line warning: something was set aside and the run goes on. Shown even with
    --quiet, since it changes what the run does."""
    from rich.markup import escape

    stderr.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields `advance(n=1, **fields)`; silent when quiet, when
    stderr is not a terminal (logs get the one-line stage messages instead) and off the main
    thread (work spread over a device fleet: its caller shows one bar)."""
    if _state["quiet"] or not stderr.is_terminal or \
            threading.current_thread() is not threading.main_thread():  # one live display
        yield lambda n=1, **_: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            bar.update(task, advance=n, status=status)

        yield advance
