"""Run folders: staged while a run works, published by one rename when it is complete,
with a manifest.json listing every artefact with its size and checksum.

While a run works it lives in a hidden sibling `.<name>.partial`; an interrupted run leaves
that folder so the same command resumes it; only a complete run appears under `<name>`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
CONFIG = "config.json"


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@dataclass
class RunFolder:
    """A run being written: artefacts go into `work`, `publish()` moves them to `final`."""

    final: Path
    config: dict[str, Any]
    work: Path = field(init=False)
    manifest: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.final = Path(self.final)
        self.work = self.final.with_name(f".{self.final.name}.partial")
        self.manifest = {
            "edgeprune": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["edgeprune", *sys.argv[1:]]),
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}",
            "config": self.config,
            "artefacts": [],
            "stages": {},
        }

    @classmethod
    def open(cls, final: Path, config: dict[str, Any], overwrite: bool = False,
             protect: tuple[Path, ...] = ()) -> RunFolder:
        """Prepare a run folder, refusing to replace a finished run unless `overwrite`, and
        never one that holds any of the `protect` paths (the user's input files)."""
        run = cls(final, config)
        if run.final.exists():
            if not overwrite:
                raise EdgepruneError(f"{run.final} already holds a run; pass --overwrite or "
                                     "choose another --name/--out")
            for p in protect:
                if p is not None and _is_within(Path(p), run.final):
                    raise EdgepruneError(f"--overwrite would delete the input {p} inside "
                                         f"{run.final}; choose another --out")
        if run.work.exists() and run._stale():
            shutil.rmtree(run.work)
        run.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.work / CONFIG, json.dumps(config, indent=2, sort_keys=True))
        return run

    def _stale(self) -> bool:
        """A leftover partial run is reused only if it was started with the same config."""
        try:
            return json.loads((self.work / CONFIG).read_text()) != self.config
        except (OSError, ValueError):
            return True

    @property
    def resumed(self) -> bool:
        return any(self.work.iterdir())

    def path(self, rel: str) -> Path:
        p = self.work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def record(self, path: Path, kind: str, stage: str, **extra: Any) -> None:
        """Add a written artefact (inside `work`) to the manifest."""
        rel = Path(path).relative_to(self.work).as_posix()
        self.manifest["artefacts"] = [a for a in self.manifest["artefacts"] if a["path"] != rel]
        self.manifest["artefacts"].append({
            "path": rel, "kind": kind, "stage": stage, "size_bytes": Path(path).stat().st_size,
            "sha256": sha256_file(path), **extra})
        self._write_manifest()

    def stage_done(self, stage: str, **info: Any) -> None:
        self.manifest["stages"][stage] = info
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.work / MANIFEST, json.dumps(self.manifest, indent=2))

    def publish(self) -> Path:
        """Move the finished run into place (replacing an old run when overwriting)."""
        self.manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._write_manifest()
        for tmp in self.work.rglob("*.state"):
            tmp.unlink()
        old = self.final.with_name(f".{self.final.name}.old")
        if self.final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.work, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
