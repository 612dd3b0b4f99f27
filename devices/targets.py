"""Target device profiles: one JSON file per device in `targets/`, shipped as package data.

A profile says what the pruner rounds channel counts to (`simd_width`), which runtime, file
formats and thread count to benchmark with, and the roofline figures (`peak_gflops`,
`mem_bandwidth_gbs`, `efficiency`) used for estimates. `efficiency` is the share of the peak a
real runtime reaches on a whole network, per compute precision; `calibration` lists the
published measurements it was derived from (empty when it is borrowed from a similar core, as
the notes then say). In the JSON files `notes` is a list of lines, one justification per
figure; the profile joins them with newlines. `precisions` is the order in which compress
tries precisions (`--precision auto`).

A user's own board is a profile file: `load_target("myboard.toml")` (or .json) reads one with
the same keys, each checked with a one-line error naming the key; `edgeprune targets
calibrate` writes one from measurements on the device.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from edgeprune.devices.formats import EXPORTABLE, RUNTIMES, format_for_runtime
from edgeprune.errors import EdgepruneError
from edgeprune.tomlfile import read_toml

DEFAULT_TARGET = "rpi4"
"""The target every command uses when none is named: its one definition."""
ARCHES = ("aarch64", "armv7l", "x86_64")
FORMATS = EXPORTABLE
PRECISIONS = ("fp32", "int8")
"""Compute precisions a profile has an efficiency for."""
SHIP_PRECISIONS = ("int8", "fp16", "fp32")
"""Precisions a profile may list as candidates (fp16 computes as fp32 on CPUs: smaller only)."""
PROFILE_SUFFIXES = (".toml", ".json")
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
    precisions: tuple[str, ...] = ("int8", "fp32")
    notes: str = ""
    source: str = field(default="", compare=False)
    """Where the profile was read from: a shipped name or a file path."""

    @property
    def clock_ghz(self) -> float:
        """The nominal clock in `cpu` ('4x Cortex-A72 @ 1.8 GHz' -> 1.8)."""
        match = re.search(r"@ ([\d.]+) GHz", self.cpu)
        if not match:
            raise EdgepruneError(f"target {self.name}: cpu {self.cpu!r} does not end in "
                                 "'@ <clock> GHz'")
        return float(match[1])

    @property
    def ship_format(self) -> str:
        """The file format the profile's runtime loads."""
        return format_for_runtime(self.runtime).name

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TargetProfile:
        """Build a profile from parsed JSON or TOML; missing, unknown or wrong values are a
        one-line error naming the key."""
        data = {k: v for k, v in data.items() if k != "source"}  # where it came from: `source`
        known = [f.name for f in fields(cls) if f.name != "source"]
        optional = ("notes", "calibration", "precisions")
        required = [k for k in known if k not in optional]
        missing = [k for k in required if k not in data]
        unknown = [k for k in data if k not in known]
        if missing or unknown:
            raise EdgepruneError(f"target file {source}: missing keys {missing}, "
                                 f"unknown keys {unknown}")
        values = dict(data)
        for key in ("formats", "precisions"):
            if key in values:
                values[key] = tuple(_strings(values[key], key, source))
        if isinstance(values.get("notes"), list):
            values["notes"] = "\n".join(map(str, values["notes"]))
        _check_values(values, source)
        values["calibration"] = tuple(_calibration(c, source)
                                      for c in values.get("calibration", ()))
        profile = cls(**values, source=source)
        profile.clock_ghz  # noqa: B018 - the cpu string must name the clock
        return profile


def _strings(value: Any, key: str, source: str) -> list[str]:
    if not isinstance(value, list | tuple) or not value or \
            not all(isinstance(v, str) for v in value):
        raise EdgepruneError(f"target file {source}: {key} must be a non-empty list of names")
    return list(value)


def _check_values(values: dict[str, Any], source: str) -> None:
    """Types and ranges of a profile's values, each failure one line naming the key."""
    def bad(key: str, expected: str) -> EdgepruneError:
        return EdgepruneError(f"target file {source}: {key} must be {expected}, not "
                              f"{values[key]!r}")

    for key in ("name", "description", "cpu"):
        if not isinstance(values[key], str) or not values[key].strip():
            raise bad(key, "a non-empty string")
    for key in ("cores", "simd_width", "ram_mb", "threads"):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < 1:
            raise bad(key, "a positive integer")
    for key in ("peak_gflops", "mem_bandwidth_gbs"):
        if isinstance(values[key], bool) or not isinstance(values[key], int | float) or \
                not 0 < values[key] < float("inf"):
            raise bad(key, "a positive number")
    choices = {"arch": ARCHES, "runtime": RUNTIMES}
    for key, allowed in choices.items():
        if values[key] not in allowed:
            raise bad(key, f"one of {', '.join(allowed)}")
    for key, allowed in (("formats", FORMATS), ("precisions", SHIP_PRECISIONS)):
        wrong = [v for v in values.get(key, ()) if v not in allowed]
        if wrong:
            raise bad(key, f"a list of {', '.join(allowed)}")
    efficiency = values["efficiency"]
    if not isinstance(efficiency, dict) or sorted(efficiency) != sorted(PRECISIONS):
        raise EdgepruneError(f"target file {source}: efficiency needs exactly the keys "
                             f"{list(PRECISIONS)}")
    if not all(isinstance(v, int | float) and 0 < v <= 1 for v in efficiency.values()):
        raise bad("efficiency", "shares of the peak in (0, 1]")


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
    """The profile called `name`, or the profile file at `name` (.toml or .json); an unknown
    name is an error with a close-match suggestion."""
    registry = _registry()
    if name in registry:
        return registry[name]
    if name.lower().endswith(PROFILE_SUFFIXES):
        return read_profile(Path(name))
    raise unknown_name_error("target", name, registry)


def default_target() -> TargetProfile:
    """The profile of DEFAULT_TARGET, for APIs called without a target."""
    return load_target(DEFAULT_TARGET)


def inference_threads(target: TargetProfile, requested: int | None = None,
                      where: str = "device") -> int:
    """The threads a model file runs with. The rule: `requested` (--threads) when given,
    else the target's `threads`; measured on this machine (`where="host"`) never more than
    its cores; for a roofline estimate (`where="estimate"`) never more than the target's
    cores; on the device exactly that."""
    threads = requested or target.threads
    if where == "host":
        return max(1, min(threads, os.cpu_count() or 1))
    if where == "estimate":
        return max(1, min(threads, target.cores))
    return threads


def read_profile(path: Path) -> TargetProfile:
    """A user's own profile file (TOML or JSON with the shipped profiles' keys), checked."""
    if not path.is_file():
        raise EdgepruneError(f"target file {path} does not exist; pass a shipped name "
                             f"({', '.join(sorted(_registry()))}) or a .toml/.json profile")
    if path.suffix.lower() == ".toml":
        data = read_toml(path, "target file")
    else:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise EdgepruneError(f"target file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise EdgepruneError(f"target file {path} must hold one table of profile keys")
    return TargetProfile.from_dict(data, str(path))


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> EdgepruneError:
    """'unknown target 'rpi-4'; did you mean 'rpi4'? known targets: ...' as one error."""
    known = sorted(known)
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return EdgepruneError(f"unknown {kind} '{name}'; {hint}known {kind}s: {', '.join(known)}")
