"""Numeric options with their range: `bounded(name, help)` is the `typer.Option` of one count,
ratio, budget or seed, its range taken from the one table (`edgeprune.jobs.bounds.BOUNDS`),
shown at the end of its --help line and checked while the command line is parsed, before the
command starts any work. A value out of range (NaN, infinity and huge numbers included) is an
`OutOfRange` error, which `edgeprune.cli.main` prints as one line with exit code 2."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from edgeprune.jobs.bounds import bound_of, flag


class OutOfRange(typer.BadParameter):
    """A number the command line gave outside its option's range; the message is the whole
    line to print (flag, value and the range)."""


def bounded(name: str, help: str, command: str | None = None) -> Any:
    """The `typer.Option` of numeric parameter `name` (in `command`, when its range is the
    command's own): `help` followed by the range, and a check of the range on parsing."""
    bound = bound_of(name, command)

    def check(value: Any) -> Any:
        if value is not None and not bound.contains(value):
            raise OutOfRange(f"{flag(name)} {value} must be {bound.expected()}")
        return value

    text = escape(help)  # Typer's help is rich markup: "[default: ...]" would vanish
    return typer.Option(help=f"{text} (range: {bound.shown()})", callback=check)
