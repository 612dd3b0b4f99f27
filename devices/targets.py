"""Target device profiles: one JSON file per device in `targets/`, shipped as package data.

A profile says what the pruner rounds channel counts to (`simd_width`), which runtime, file
formats and thread count to benchmark with, and the roofline figures (`peak_gflops`,
`mem_bandwidth_gbs`) used for estimates. In the JSON files `notes` is a list of lines, one
justification per figure; the profile joins them with newlines.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

from edgeprune.errors import EdgepruneError

ARCHES = ("aarch64", "armv7l", "x86_64")
RUNTIMES = ("tflite", "onnxruntime")
FORMATS = ("tflite", "onnx")


@dataclass(frozen=True)
class TargetProfile:
    """One edge device as the pruner, exporter and benchmark see it."""

    name: str
    description: str
    cpu: str
    arch: str
    cores: int
    simd_width: int
    ram_mb: int
    runtime: str
    threads: int
    formats: tuple[str, ...]
    peak_gflops: float
    mem_bandwidth_gbs: float
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TargetProfile:
        """Build a profile from parsed JSON; missing or unknown keys are a one-line error."""
        known = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.name != "notes"]
        missing = [k for k in required if k not in data]
        unknown = [k for k in data if k not in known]
        if missing or unknown:
            raise EdgepruneError(f"target file {source}: missing keys {missing}, "
                                 f"unknown keys {unknown}")
        values = dict(data)
        values["formats"] = tuple(values["formats"])
        if isinstance(values.get("notes"), list):
            values["notes"] = "\n".join(values["notes"])
        return cls(**values)


@cache
def _registry() -> dict[str, TargetProfile]:
    """All shipped profiles by name, read once from the package data."""
    folder = resources.files("edgeprune.devices").joinpath("targets")
    profiles = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            profile = TargetProfile.from_dict(json.loads(entry.read_text()), entry.name)
            profiles[profile.name] = profile
    return profiles


def list_targets() -> list[TargetProfile]:
    """Every known target profile, sorted by name."""
    return sorted(_registry().values(), key=lambda p: p.name)


def load_target(name: str) -> TargetProfile:
    """The profile called `name`; an unknown name is an error with a close-match suggestion."""
    registry = _registry()
    if name in registry:
        return registry[name]
    raise unknown_name_error("target", name, registry)


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> EdgepruneError:
    """'unknown target 'rpi-4'; did you mean 'rpi4'? known targets: ...' as one error."""
    known = sorted(known)
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return EdgepruneError(f"unknown {kind} '{name}'; {hint}known {kind}s: {', '.join(known)}")
