"""Target device profiles: one JSON file per device in `targets/`, shipped as package data.

A profile says what the pruner rounds channel counts to (`simd_width`), which runtime, file
formats and thread count to benchmark with, and the roofline figures (`peak_gflops`,
`mem_bandwidth_gbs`, `efficiency`) used for estimates. `efficiency` is the share of the peak a
real runtime reaches on a whole network, per compute precision; `calibration` lists the
published measurements it was derived from (empty when it is borrowed from a similar core, as
the notes then say). In the JSON files `notes` is a list of lines, one justification per
figure; the profile joins them with newlines.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from typing import Any

from edgeprune.errors import EdgepruneError

ARCHES = ("aarch64", "armv7l", "x86_64")
RUNTIMES = ("tflite", "onnxruntime")
FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "int8")
CALIBRATION_KEYS = ("precision", "model", "macs", "threads", "clock_ghz", "latency_ms", "source")


@dataclass(frozen=True)
class Calibration:
    """One published latency the profile's efficiency was fitted to."""

    precision: str
    model: str
    macs: float
    threads: int
    clock_ghz: float
    latency_ms: float
    source: str

    def implied_efficiency(self, profile: TargetProfile) -> float:
        """FLOPs / (latency x the profile's peak scaled to this clock and thread count)."""
        peak = profile.peak_gflops * 1e9 * (self.clock_ghz / profile.clock_ghz) * (
            min(self.threads, profile.cores) / profile.cores)
        return 2 * self.macs / (self.latency_ms / 1e3 * peak)


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
    efficiency: dict[str, float] = field(hash=False)
    calibration: tuple[Calibration, ...] = field(default_factory=tuple)
    notes: str = ""

    @property
    def clock_ghz(self) -> float:
        """The nominal clock in `cpu` ('4x Cortex-A72 @ 1.8 GHz' -> 1.8)."""
        match = re.search(r"@ ([\d.]+) GHz", self.cpu)
        if not match:
            raise EdgepruneError(f"target {self.name}: cpu {self.cpu!r} does not end in "
                                 "'@ <clock> GHz'")
        return float(match[1])

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TargetProfile:
        """Build a profile from parsed JSON; missing or unknown keys are a one-line error."""
        known = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.name not in ("notes", "calibration")]
        missing = [k for k in required if k not in data]
        unknown = [k for k in data if k not in known]
        if missing or unknown:
            raise EdgepruneError(f"target file {source}: missing keys {missing}, "
                                 f"unknown keys {unknown}")
        values = dict(data)
        values["formats"] = tuple(values["formats"])
        if isinstance(values.get("notes"), list):
            values["notes"] = "\n".join(values["notes"])
        if sorted(values["efficiency"]) != sorted(PRECISIONS):
            raise EdgepruneError(f"target file {source}: efficiency needs exactly the keys "
                                 f"{list(PRECISIONS)}")
        values["calibration"] = tuple(_calibration(c, source)
                                      for c in values.get("calibration", ()))
        return cls(**values)


def _calibration(data: dict[str, Any], source: str) -> Calibration:
    if sorted(data) != sorted(CALIBRATION_KEYS):
        raise EdgepruneError(f"target file {source}: a calibration entry needs exactly the keys "
                             f"{list(CALIBRATION_KEYS)}")
    return Calibration(**data)


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
