"""`bench_command`: what `edgeprune bench` does: benchmark several model files the same way and
compare them.

Every file is measured with the same warm-up, run count, minimum duration and threads, on this
machine (label `host`) or on a device (label `device`). Without a device each row also gets
a roofline estimate for the target (label `estimate`), kept in its own field, never mixed
into the measurement. Ratios are relative to the first file (e.g. dense vs pruned).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgeprune.console import info, progress_bar
from edgeprune.devices.bench import BenchOptions, BenchResult, get_backend
from edgeprune.devices.estimate import Estimate, ModelCost, estimate_model
from edgeprune.devices.results import Ratio
from edgeprune.devices.ssh import SshOptions
from edgeprune.devices.targets import (
    DEFAULT_TARGET,
    TargetProfile,
    inference_threads,
    load_target,
)
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_text
from edgeprune.jobs.candidates import on_each_device
from edgeprune.jobs.checks import check_output_file
from edgeprune.manifest import MANIFEST, read_manifest

SCHEMA = "edgeprune.bench/1"
FLEET_SCHEMA = "edgeprune.bench-fleet/1"


@dataclass
class BenchRow:
    """One model file: its measurement, the target estimate (host runs only) and its ratios
    to the first file (ratio < 1: smaller / faster than the first). The latency ratio comes
    from rounds in which both files ran in turn (`p50_spread`: its lowest and highest round)."""

    path: Path
    result: BenchResult
    estimate: Estimate | None = None
    cost: ModelCost | None = None
    p50_ratio: float = 1.0
    size_ratio: float = 1.0
    p50_spread: tuple[float, float] = (1.0, 1.0)

    @property
    def label(self) -> str:
        return self.result.label

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        path = self.path
        if relative_to is not None and path.resolve().is_relative_to(relative_to.resolve()):
            path = path.resolve().relative_to(relative_to.resolve())
        return {
            "model": path.as_posix(), "format": self.result.format,
            "precision": self.result.precision, "size_bytes": self.result.file_size_bytes,
            "label": self.label, "device": self.result.device,
            "measurement": self.result.to_dict(),
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "cost": self.cost.to_dict() if self.cost else None,
            "ratios": {"p50": self.p50_ratio, "p50_spread": list(self.p50_spread),
                       "size": self.size_ratio},
        }


def default_threads(target: TargetProfile, device: str | None,
                    requested: int | None = None) -> int:
    """The threads files run with on `device` (see `inference_threads`)."""
    return inference_threads(target, requested,
                             "device" if device and device != "local" else "host")


@dataclass
class BenchOutcome:
    """What `edgeprune bench` did: the rows of every device, the options they were measured
    with, and the files it wrote (--json) or appended to (--run)."""

    target: str
    options: BenchOptions
    fleet: dict[str, list[BenchRow]]
    json_path: Path | None = None
    appended: dict[str, Path] | None = None


def bench_command(models: Sequence[Path | str], target: str = DEFAULT_TARGET,
                  devices: Sequence[str] | None = None, threads: int | None = None,
                  options: BenchOptions | None = None, ssh: SshOptions | None = None,
                  json_out: Path | None = None, run: Path | None = None) -> BenchOutcome:
    """What `edgeprune bench` does: resolve the target once, check the outputs before any
    measurement, measure every file on every device (this machine without one), then write
    the raw results to `json_out` and append them to the run folder `run`. A failing device
    leaves both untouched."""
    profile = load_target(target)
    if run is not None:
        check_run_dir(run)
    if json_out is not None:  # replaced if it exists, like any results file
        check_output_file(json_out, overwrite=True, flag="--json")
    devices = list(devices or ["local"])
    options = dataclasses.replace(options or BenchOptions(),
                                  threads=default_threads(profile, devices[0], threads))
    fleet = bench_fleet(models, profile, devices, options, ssh)
    outcome = BenchOutcome(profile.name, options, fleet)
    if json_out is not None:
        records = [bench_record(rows, profile.name, d, options) for d, rows in fleet.items()]
        write_json(json_out, records[0] if len(records) == 1 else fleet_record(records))
        outcome.json_path = json_out
    if run is not None:
        outcome.appended = {d: append_to_run(run, bench_record(rows, profile.name, d, options,
                                                               run))
                            for d, rows in fleet.items()}
    return outcome


def bench_models(paths: Sequence[Path | str], target: str = DEFAULT_TARGET,
                 device: str | None = None, options: BenchOptions | None = None,
                 ssh: SshOptions | None = None) -> list[BenchRow]:
    """`bench_rows` for the target named `target` (a shipped name or a profile file)."""
    return bench_rows(paths, load_target(target), device, options, ssh)


def bench_rows(paths: Sequence[Path | str], profile: TargetProfile,
               device: str | None = None, options: BenchOptions | None = None,
               ssh: SshOptions | None = None) -> list[BenchRow]:
    """Benchmark every file in `paths` with the same options, interleaved in one runner
    process (rounds of every file in turn), so load from other work hits each file alike;
    one row per file, in order.

    `device` None or 'local' measures here and adds target estimates; 'ssh://user@host[:port]'
    measures on the device. A failure raises (one line) and nothing is returned.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise EdgepruneError("give at least one .onnx or .tflite model file")
    options = options or BenchOptions(threads=default_threads(profile, device))
    backend = get_backend(device or "local", ssh)
    for p in paths:  # fail before connecting or measuring anything
        if p.is_dir():
            raise EdgepruneError(f"{p} is a folder; give its .onnx or .tflite files (a run's "
                                 "are in RUN/ship/ and RUN/models/)")
        if not p.is_file():
            raise EdgepruneError(f"model file not found: {p}")
    with progress_bar(None, f"bench {len(paths)} files on {escape(backend.device)}"):
        results = backend.bench(paths, options)
    rows = []
    for p, result in zip(paths, results, strict=True):
        cost, estimate = (estimate_model(p, profile) if backend.label == "host"
                          else (None, None))
        rows.append(BenchRow(p, result, estimate, cost))
    _set_ratios(rows)
    info(f"bench: {len(rows)} model file{'s' if len(rows) > 1 else ''} on {escape(backend.device)} "
         f"({backend.label}), {options.threads} thread{'s' if options.threads > 1 else ''}, "
         f"warm-up {options.warmup}, >= {options.runs} runs and >= {options.min_seconds:g} s "
         f"each, interleaved in {options.rounds} rounds")
    return rows


def bench_fleet(paths: Sequence[Path | str], profile: TargetProfile, devices: Sequence[str],
                options: BenchOptions, ssh: SshOptions | None = None
                ) -> dict[str, list[BenchRow]]:
    """`bench_rows` on every device at once (one thread and one connection each), rows per
    device in the order given; a failure on any device raises, naming it, and returns
    nothing."""
    return on_each_device(list(dict.fromkeys(devices)), lambda device: bench_rows(
        paths, profile, device, options, ssh))


def fleet_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What --json writes for several devices: one `bench_record` per device."""
    return {"schema": FLEET_SCHEMA, "devices": [r["device"] for r in records],
            "records": list(records)}


def _set_ratios(rows: list[BenchRow]) -> None:
    first = rows[0].result
    for row in rows:
        ratio = Ratio.of(row.result, first)
        row.p50_ratio, row.p50_spread = ratio.value, (ratio.low, ratio.high)
        row.size_ratio = row.result.file_size_bytes / first.file_size_bytes


def bench_record(rows: Sequence[BenchRow], target: str, device: str | None,
                 options: BenchOptions, relative_to: Path | None = None) -> dict[str, Any]:
    """The JSON-ready record of one `bench` call (what --json writes and --run appends)."""
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target, "device": device or "local", "options": options.to_dict(),
        "rows": [row.to_dict(relative_to) for row in rows],
    }


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write the raw results atomically."""
    atomic_write_text(Path(path), json.dumps(record, indent=2) + "\n")


def check_run_dir(run_dir: Path) -> Path:
    """The run's manifest.json; an error if the folder holds no finished run."""
    read_manifest(run_dir)
    return Path(run_dir) / MANIFEST


def append_to_run(run_dir: Path, record: dict[str, Any]) -> Path:
    """Append `record` to the run manifest's "bench" list (read, extend, atomic replace)."""
    data = read_manifest(run_dir)
    manifest = Path(run_dir) / MANIFEST
    if not isinstance(data.get("bench", []), list):
        raise EdgepruneError(f"{manifest}: 'bench' is not a list; not an edgeprune manifest?")
    data["bench"] = [*data.get("bench", []), record]
    atomic_write_text(manifest, json.dumps(data, indent=2))
    return manifest

