"""Read a run folder into memory: only the files a run writes, nothing from the environment.

Every file except manifest.json is optional, so the report also works on a folder that a
later stage (bench, atlas) extended or on one that misses a stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.manifest import read_manifest

REPORT_FILES = ("report.html", "report.json")


@dataclass
class RunData:
    """The contents of one run folder that the report shows."""

    run_dir: Path
    manifest: dict[str, Any]
    summary: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_toml: str | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    atlas: list[Path] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgepruneError(f"cannot read {path}: {e}") from None


def _optional_json(path: Path) -> Any:
    return _json(path) if path.is_file() else None


def _optional_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file a run writes, or None when it is absent; EdgepruneError when it
    holds anything else (a list, a number), which no stage writes."""
    data = _optional_json(path)
    if data is not None and not isinstance(data, dict):
        raise EdgepruneError(f"{path} holds a JSON {type(data).__name__}, not the object a run "
                             "writes; restore it from the run or run the command again")
    return data


def _scores(path: Path) -> dict[str, np.ndarray]:
    """{layer: per-channel scores} from scores.pt, loaded without unpickling code."""
    if not path.is_file():
        return {}
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise EdgepruneError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise EdgepruneError(f"{path} does not hold a {{layer: scores}} dict")
    return {str(k): v.detach().double().flatten().numpy() for k, v in raw.items()
            if hasattr(v, "detach")}


def _sidecars(models: Path) -> dict[str, dict[str, Any]]:
    """Each export's sidecar JSON by model file path relative to the run folder."""
    out: dict[str, dict[str, Any]] = {}
    for sidecar in sorted(models.glob("*.json")) if models.is_dir() else []:
        data = _optional_json(sidecar)
        if isinstance(data, dict) and "format" in data:
            out[f"models/{sidecar.name.removesuffix('.json')}"] = data
    return out


def load_run(run_dir: Path | str) -> RunData:
    """Everything the report needs from `run_dir`; an error if it holds no manifest.json."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, finished=False)  # compress reports before publishing
    config = _optional_object(run_dir / "config.json") or manifest.get("config") or {}
    toml_path = run_dir / "config.toml"
    return RunData(
        run_dir=run_dir, manifest=manifest, summary=_optional_object(run_dir / "summary.json"),
        config=config, config_toml=toml_path.read_text() if toml_path.is_file() else None,
        scores=_scores(run_dir / "scores.pt"), sidecars=_sidecars(run_dir / "models"),
        shapes=_optional_object(run_dir / "architecture.json") or {},
        atlas=sorted((run_dir / "atlas").glob("*.png")) if (run_dir / "atlas").is_dir() else [])
