"""Interruptions handled alike: Ctrl-C (SIGINT), SIGTERM (what `kill`, systemd and job
schedulers send) and SIGHUP (a closed terminal or SSH session) all unwind the command, so
every `finally` and `except BaseException` on the way runs: atomic writes and staged files
remove their temporary files, run folders release their lock and keep their `.partial`
folder to resume. When the process ends, one line on stderr says which signal stopped it and
what can be resumed, and the exit code is 128 + the signal's number (130, 143, 129), as a
shell reports a command killed by it.

Ctrl-C raises KeyboardInterrupt as always (the CLI exits 130 on it); SIGTERM and SIGHUP raise
`Interrupted`, a SystemExit carrying its exit code, which no `except Exception` swallows.
A job that leaves something to resume says so with `add_hint` (and `remove_hint` once it is
done); the line names the latest hint. Forked children (DataLoader workers) keep the default
behaviour. Standard library only; `install` is the one call the CLI makes.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals handled like Ctrl-C."""


class Interrupted(SystemExit):
    """Raised in the main thread when SIGTERM or SIGHUP arrives; exits with 128 + its
    number once every cleanup on the way has run."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


_received: int | None = None
_owner: int | None = None
_hints: list[str] = []


def add_hint(text: str) -> str:
    """Say what an interruption from now on leaves to resume and how (e.g. 'run the same
    command again to resume RUN'); returns `text`, to pass to `remove_hint`."""
    _hints.append(text)
    return text


def remove_hint(text: str) -> None:
    """Withdraw a hint given with `add_hint` (the work it spoke of is finished or gone)."""
    if text in _hints:
        _hints.remove(text)


def _default(signum: int) -> signal.Handlers | object:
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def _handle(signum: int, frame: FrameType | None) -> None:
    """Record the signal and unwind the command. A second signal meets the default
    behaviour, so a cleanup that hangs can still be stopped."""
    global _received
    if os.getpid() != _owner:  # a forked child (a DataLoader worker): behave as by default
        signal.signal(signum, _default(signum))
        os.kill(os.getpid(), signum)
        return
    if _received is None:
        _received = signum
        for other in SIGNALS:
            signal.signal(other, _default(other))
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def message(signum: int) -> str:
    """The one line printed after an interruption by `signum`."""
    name = signal.Signals(signum).name
    if _hints:
        return f"interrupted by {name}: {_hints[-1]}"
    return (f"interrupted by {name}: temporary files were removed and nothing was kept; run "
            "the same command again to start over")


def _say() -> None:
    """At exit, after an interruption: its one line on stderr."""
    if _received is None or os.getpid() != _owner:
        return
    try:
        sys.stderr.write(message(_received) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the terminal that sent SIGHUP may be gone
        pass


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP like Ctrl-C in this process (see the module's
    docstring). Safe to call again; does nothing outside the main thread, where signal
    handlers cannot be set."""
    global _received, _owner
    if threading.current_thread() is not threading.main_thread():
        return
    if _owner is None:
        atexit.register(_say)
    _received, _owner = None, os.getpid()
    _hints.clear()
    for s in SIGNALS:
        signal.signal(s, _handle)
