"""Mistakes on the command line as one line: the option (or argument) they concern, what is
wrong with it, and the fix, instead of Typer's usage box. `edgeprune.cli.main` runs the app
without Click's standalone handling and prints `usage_line(error)` for what Click raises.

Typer >= 0.22 carries its own copy of Click, whose exceptions are other classes than those
of an installed `click`; `CLICK` is the module holding the ones Typer raises."""

from __future__ import annotations

from typing import Any

from edgeprune.cli.bounds import OutOfRange
from edgeprune.jobs.bounds import BOUNDS, COMMAND_BOUNDS, bound_of

try:
    from typer._click import exceptions as CLICK  # noqa: N812 - a module, named for what it is
except ImportError:  # Typer < 0.22 uses the installed click
    from click import exceptions as CLICK  # type: ignore[no-redef]  # noqa: N812


def is_help_request(error: BaseException) -> bool:
    """Whether `error` is Click asking to show a command's help (no arguments given)."""
    return type(error).__name__ == "NoArgsIsHelpError"


def usage_line(error: Any) -> str:
    """One line for a Click exception: what is wrong, the option it concerns and the fix."""
    if isinstance(error, OutOfRange):
        return error.message
    ctx = getattr(error, "ctx", None)
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`edgeprune --help`"
    param = getattr(error, "param", None)
    missing = isinstance(error, CLICK.MissingParameter)
    if isinstance(error, CLICK.BadParameter) and param is not None and not missing:
        return _bad_value(error, param, ctx, where)
    message = " ".join(error.format_message().split()).rstrip(".")
    if isinstance(error, CLICK.UsageError):
        return f"{message[:1].lower()}{message[1:]}; {where} lists what it takes"
    return message


def _bad_value(error: Any, param: Any, ctx: Any, where: str) -> str:
    """'--threads: input should be a valid integer; give an integer at least 1, ...'."""
    name = max(param.opts, key=len) if param.param_type_name == "option" and param.opts \
        else f"argument {param.name!r}"
    reason = " ".join(str(error.message).split()).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    command = ctx.info_name if ctx is not None else None
    if param.name in BOUNDS or (command, param.name) in COMMAND_BOUNDS:
        bound = bound_of(param.name, command)
        kind = "an integer" if bound.integer else "a number"
        return f"{name}: {reason}; give {kind} {bound.expected()}"
    return f"{name}: {reason}; see {where}"
