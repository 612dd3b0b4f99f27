"""Mistakes on the command line as one line: the option (or argument) they concern, what is
wrong with it, and the fix, instead of Typer's usage box. `edgeprune.cli.main` runs the app
without Click's standalone handling and prints `usage_line(error)` for what Click raises.

Typer >= 0.22 carries its own copy of Click, whose exceptions are other classes than those
of an installed `click`; `CLICK` is the module holding the ones Typer raises."""

from __future__ import annotations

import re
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
    moved = _model_elsewhere(error, message, ctx)
    if moved:
        return moved
    if isinstance(error, CLICK.UsageError):
        return f"{message[:1].lower()}{message[1:]}; {where} lists what it takes"
    return message


def _model_elsewhere(error: Any, message: str, ctx: Any) -> str | None:
    """The fix when the model was given the way another command takes it: `compress` and
    `train` take `--model MODEL`, `prune`, `score`, `export` and `explain` take it as their
    first argument."""
    if ctx is None:
        return None
    params = {p.name: p for p in ctx.command.params}
    model = params.get("model")
    if model is None:
        return None
    path = ctx.command_path
    if model.param_type_name == "option":
        extra = re.search(r"unexpected extra argument(?:\(s\)|s)? \((.+)\)$", message)
        ref = extra.group(1).split()[0] if extra else ""
        if _looks_like_model(ref) and isinstance(error, CLICK.UsageError):
            return (f"{path} takes the model as an option, not an argument: "
                    f"`{path} --model {ref}`")
    elif isinstance(error, CLICK.NoSuchOption) and error.option_name == "--model":
        return (f"{path} takes the model as its first argument, not --model: "
                f"`{path} MODEL [OPTIONS]`")
    return None


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


def _looks_like_model(ref: str) -> bool:
    """A --model reference: 'demo', a zoo name, 'library:NAME' or a checkpoint path."""
    from edgeprune.models import list_models

    return (ref == "demo" or ":" in ref or ref.endswith((".pt", ".pth"))
            or ref in list_models())
