#!/usr/bin/env python3
"""Check the architecture's layer contract (pyproject.toml, [tool.importlinter]) from the
repository root, exactly as the test suite does: `python tools/check_layers.py`.

import-linter reads the package from the file system, where export/ and devices/ sit beside
edgeprune/ rather than inside it, so plain `lint-imports` at the root cannot find
`edgeprune.export`. This script copies the tree into a temporary folder laid out as installed
(edgeprune/export, edgeprune/devices) and runs import-linter there; its exit code is
import-linter's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def stage(dest: Path, root: Path = ROOT) -> Path:
    """A copy of the package at `dest` as it is installed, with the project's pyproject.toml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "assets")
    shutil.copytree(root / "edgeprune", dest / "edgeprune", ignore=ignore)
    for part in ("export", "devices"):
        shutil.copytree(root / part, dest / "edgeprune" / part, ignore=ignore)
    shutil.copy(root / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint(folder: Path) -> subprocess.CompletedProcess:
    """import-linter on a staged folder, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgeprune-layers-") as tmp:
        proc = lint(stage(Path(tmp)))
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
