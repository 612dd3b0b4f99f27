"""The manifest of a run folder (`manifest.json`): what a finished `edgeprune compress` run
lists, each artefact with its size and SHA-256. Commands that read or replace a run folder
check it here first, so a folder that only looks like a run is never taken for one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError

MANIFEST = "manifest.json"


def manifest_problem(folder: Path | str, finished: bool = True) -> str | None:
    """Why `folder` is not an edgeprune run folder (a finished one, with `finished`), or None
    when it is one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return f"it holds no {MANIFEST}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"its {MANIFEST} is not readable JSON ({str(e).splitlines()[0]})"
    if not isinstance(data, dict) or not isinstance(data.get("edgeprune"), str):
        return f"its {MANIFEST} was not written by edgeprune"
    artefacts = data.get("artefacts")
    if not isinstance(artefacts, list) or not all(
            isinstance(a, dict) and isinstance(a.get("path"), str)
            and isinstance(a.get("sha256"), str) for a in artefacts):
        return f"its {MANIFEST} has no valid list of artefacts"
    if finished and "finished" not in data:
        return f"its {MANIFEST} is of a run that never finished"
    return None


def read_manifest(folder: Path | str, finished: bool = True) -> dict[str, Any]:
    """The manifest of run folder `folder`, which must be finished unless `finished` is
    False (a run reporting on itself before publishing); EdgepruneError naming the folder and
    why otherwise."""
    problem = manifest_problem(folder, finished)
    if problem is not None:
        raise EdgepruneError(f"{folder} is not an edgeprune run folder: {problem}; pass the "
                             "folder of a finished `edgeprune compress` run")
    return json.loads((Path(folder) / MANIFEST).read_text())
