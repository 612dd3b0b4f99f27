"""The JSON file a benchmark merges its results into, one key at a time, so that a stopped run
resumes where it was (the benchmark scripts import it from their own folder)."""

from __future__ import annotations

import json
from pathlib import Path


class ResultsFile:
    """`data` holds every result; `save` merges one key into the file as it is on disk now
    (another run may have written to it meanwhile, and its results win over this run's
    older copy of them) and replaces the file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, key: str, value: object, show: str | None = None) -> None:
        """Merge `key` = `value` in and write; prints the key and value (or only `show`)."""
        on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data = {**on_disk, key: value}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)
        print(show if show is not None else f"{key}: {value}", flush=True)
