"""Helpers shared by the CLI tests: run `edgeprune` in-process, check one-line errors."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from edgeprune.cli import main

FINISHED_RUN = {"edgeprune": "0.1.0", "artefacts": [], "finished": "2026-01-01T00:00:00+00:00"}
"""The least manifest.json of a finished run (edgeprune.manifest)."""


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `edgeprune ARGS` in-process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["edgeprune", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("error:") and match in " ".join(lines), err
