"""Keep conversion quiet: litert-torch, its MLIR converter and the TFLite runtime print progress
trees, absl INFO lines and delegate notices that a user of `edgeprune compress` does not need.

What can be switched off is switched off by its own setting (environment variables read at
import, logger levels); what native code prints regardless is captured and shown only if the
step fails, so errors keep their context.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# setdefault: a user who sets these on purpose (e.g. to debug the converter) keeps their value.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow/LiteRT C++ INFO and WARNING lines
    "LITERT_TORCH_SHOW_PROGRESS": "n",  # litert-torch's [START]/[DONE] tree on stdout
}
# torch warns, once at litert-torch's import, that a pytree registration is deprecated.
QUIET_LOGGERS = ("torch.utils._pytree",)


def set_quiet_env() -> None:
    """Set the quiet environment variables (if unset); call before importing litert-torch."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextmanager
def quiet_loggers(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the level of the known noisy Python loggers while inside, then restore it."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved, strict=True):
            lg.setLevel(old)


@contextmanager
def captured_stderr() -> Iterator[None]:
    """Redirect file descriptor 2 (where native libraries log) to a temporary file while
    inside; if the block raises, replay what was captured on stderr before the error."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (daemonised): nothing to capture
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
