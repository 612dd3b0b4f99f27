"""Checks every job runs on its options and output paths before any work starts, so that a
value that cannot work fails in one line naming the flag, not after minutes of work."""

from __future__ import annotations

import math
from pathlib import Path

from edgeprune.errors import EdgepruneError

Check = tuple[str, "float | int | None", bool, str]
"""(flag, value, whether it is acceptable, what is expected), e.g.
("--lr", lr, lr > 0, "a positive learning rate, e.g. 0.01")."""


def check_options(*checks: Check) -> None:
    """EdgepruneError for the first check that fails; NaN and infinity always fail (they
    pass or fail comparisons silently)."""
    for flag, value, ok, expected in checks:
        bad_float = isinstance(value, float) and not math.isfinite(value)
        if not ok or bad_float:
            raise EdgepruneError(f"{flag} {value} must be {expected}")


def check_output_file(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """EdgepruneError unless a file can be written to `out`: not an existing folder, not
    below a file, not an existing file unless `overwrite`."""
    out = Path(out)
    if out.is_dir():
        raise EdgepruneError(f"{flag} {out} is a folder; give a file path")
    check_parent(out, flag)
    if out.exists() and not overwrite:
        raise EdgepruneError(f"{out} already exists; pass --overwrite or choose another "
                             f"{flag}")


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """EdgepruneError unless a folder can be created at `out` (it may exist as a folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgepruneError(f"{flag} {out} is a file; give a folder path")
    check_parent(out, flag)


def check_parent(path: Path, flag: str) -> None:
    """EdgepruneError when the closest existing parent of `path` is not a folder."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise EdgepruneError(f"{flag} {path}: {parent} is a file, not a folder")
            return
