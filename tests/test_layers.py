"""The architecture's layer contract (pyproject.toml, [tool.importlinter]): cli > jobs > stages >
core, each importing only the layers below it, and no import cycle inside any package.

import-linter reads the package from the file system, where export/ and devices/ sit beside
edgeprune/ rather than inside it; the check therefore runs on a copy of the tree laid out as
installed (edgeprune/export, edgeprune/devices), so those two stages are checked too."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)
lint = check_layers.lint


@pytest.fixture()
def installed_layout(tmp_path: Path) -> Path:
    """A copy of the package as it is installed, with the project's pyproject.toml."""
    return check_layers.stage(tmp_path)


def test_the_documented_command_checks_the_contract_from_the_root() -> None:
    """`python tools/check_layers.py`, as README and docs/ARCHITECTURE.md show it."""
    proc = subprocess.run([sys.executable, "tools/check_layers.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_the_layer_contract_holds(installed_layout: Path) -> None:
    proc = lint(installed_layout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout
    # every module was read, the two mapped stages included
    count = sum(1 for _ in installed_layout.rglob("*.py"))
    assert f"Analyzed {count} files" in proc.stdout


@pytest.mark.parametrize(("where", "line", "broken"), [
    ("export/upward.py", "import edgeprune.jobs.compress", "imports only the layers below"),
    ("devices/upward.py", "from edgeprune.pruning import prune", "imports only the layers below"),
    ("files.py", "import edgeprune.data", "imports only the layers below"),
    ("export/cycle.py", "import edgeprune.export.api", "no import cycles"),
], ids=["export-imports-a-job", "devices-imports-pruning", "core-imports-data", "cycle"])
def test_the_contract_catches_a_violation(installed_layout: Path, where: str, line: str,
                                          broken: str) -> None:
    """An upward import or a cycle added anywhere, the mapped stages included, breaks it."""
    path = installed_layout / "edgeprune" / where
    path.write_text(path.read_text() + f"\n{line}\n" if path.exists() else f"{line}\n")
    if where == "export/cycle.py":  # and the module it imports imports it back
        api = installed_layout / "edgeprune" / "export" / "api.py"
        api.write_text(api.read_text() + "\nimport edgeprune.export.cycle\n")
    proc = lint(installed_layout)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and broken in proc.stdout, proc.stdout
