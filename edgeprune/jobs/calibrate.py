"""`calibrate_target`: what `edgeprune targets calibrate` does: measure a reference model on the
user's own board and write a target profile for it.

The device is asked what it is (CPU model, cores, maximum clock, memory, Python, runtime
versions); a reference model (default: torchvision's MobileNetV2 at 3x224x224, random weights:
latency does not depend on them) is exported in fp32 and int8 in the runtime's format and both
files are measured interleaved on the device at all its cores. The profile's peak is the base
profile's FLOPs per cycle and core scaled to this board's cores and clock; its efficiency per
precision is what makes the roofline reproduce the measurement (2 x MACs / (latency x peak)).
Precisions are listed fastest first. SIMD width and memory bandwidth, which a benchmark does
not reveal, come from the base profile, as the notes say. A device running under emulation
(qemu) is refused: its times would calibrate nothing real.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from edgeprune.console import info
from edgeprune.devices.bench import get_backend
from edgeprune.devices.estimate import count_model
from edgeprune.devices.formats import RUNTIMES, format_for_runtime
from edgeprune.devices.results import BenchOptions, BenchResult
from edgeprune.devices.ssh import DeviceFacts, SshBackend, SshOptions
from edgeprune.devices.targets import (
    ARCHES,
    DEFAULT_TARGET,
    PROFILE_SUFFIXES,
    Calibration,
    TargetProfile,
    load_target,
)
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_model
from edgeprune.files import atomic_write_text
from edgeprune.models import load_model
from edgeprune.pruning.bn_recalibration import recalibrate_bn
from edgeprune.spec import InputSpec, parse_input_size
from edgeprune.tomlfile import dumps

MAX_EFFICIENCY = 0.95
"""A fitted efficiency above this means the assumed peak is too low; the peak is raised."""


@dataclass
class CalibrationResult:
    """The profile written, what the device said, and the two measurements."""

    profile: TargetProfile
    out: Path
    facts: DeviceFacts
    measured: dict[str, BenchResult]
    macs: int


def emulated_error(device: str, why: str) -> EdgepruneError:
    """The one line refusing to calibrate from times taken under emulation."""
    return EdgepruneError(f"{device} runs under emulation ({why}): its times say nothing of "
                          "a board's speed, so no profile is fitted to them; calibrate on the "
                          "real board")


def _check_out(out: Path, name: str, overwrite: bool) -> None:
    if out.suffix.lower() not in PROFILE_SUFFIXES:
        raise EdgepruneError(f"--out {out}: a profile is a .toml or .json file")
    if out.exists() and not overwrite:
        raise EdgepruneError(f"{out} exists; pass --overwrite or choose another --out")
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise EdgepruneError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")


def _reference_files(model: str, input_size: str, fmt: str, folder: Path, trust_code: bool
                     ) -> tuple[Path, Path]:
    """The reference model exported at fp32 and int8 into `folder` (random calibration
    images: the files are for timing only). Its BatchNorm statistics are estimated on those
    images first: with an untrained network's mean 0 / variance 1, MobileNetV2's ReLU6
    outputs shrink below 1e-8, a scale the int8 export refuses because TFLite on ARM does."""
    c, h, w = parse_input_size(input_size)
    loaded = load_model(model, in_channels=c, num_classes=1000, trust_code=trust_code)
    spec = InputSpec(c, h, w, (0.5,) * c, (0.25,) * c)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, c, h, w, generator=g)
    recalibrate_bn(loaded.model, [(images,)])
    results = export_model(loaded.model, spec, folder, images[:2], formats=[fmt],
                           stem="reference", verify=False, precisions=["fp32", "int8"],
                           calibration=images)
    by_precision = {r.precision: r.path for r in results}
    return by_precision["fp32"], by_precision["int8"]


def _fit(base: TargetProfile, facts: DeviceFacts, macs: int,
         p50: dict[str, float]) -> tuple[float, float, dict[str, float]]:
    """(clock GHz, peak GFLOPS, efficiency per precision) that reproduce the measurements."""
    clock = facts.max_mhz / 1000 if facts.max_mhz else base.clock_ghz
    per_cycle_core = base.peak_gflops / (base.cores * base.clock_ghz)
    peak = per_cycle_core * facts.cores * clock
    efficiency = {p: 2 * macs / (ms / 1e3 * peak * 1e9) for p, ms in p50.items()}
    if max(efficiency.values()) > MAX_EFFICIENCY:
        peak *= max(efficiency.values()) / MAX_EFFICIENCY
        efficiency = {p: 2 * macs / (ms / 1e3 * peak * 1e9) for p, ms in p50.items()}
    return clock, peak, {p: round(v, 4) for p, v in efficiency.items()}


def _profile(name: str, device: str, base: TargetProfile, facts: DeviceFacts, fmt: str,
             runtime: str, model: str, input_size: str, macs: int,
             measured: dict[str, BenchResult]) -> dict[str, Any]:
    """The profile as data, in the shipped profiles' keys."""
    p50 = {p: r.p50_ms for p, r in measured.items()}
    clock, peak, efficiency = _fit(base, facts, macs, p50)
    first = next(iter(measured.values()))
    versions = f"{first.runtime} {first.runtime_version}, Python {facts.python}"
    today = dt.date.today().isoformat()
    source = f"measured with edgeprune targets calibrate on {device}, {today} ({versions})"
    calibration = [Calibration(p, f"{model} {input_size}", macs, first.threads, round(clock, 3),
                               round(p50[p], 4), source) for p in ("fp32", "int8")]
    cpu = facts.cpu_model or facts.machine
    return {
        "name": name,
        "description": f"{cpu} ({facts.machine}, {facts.cores} cores), calibrated on {device}",
        "cpu": f"{facts.cores}x {cpu} @ {clock:.2f} GHz", "arch": facts.machine,
        "cores": facts.cores, "simd_width": base.simd_width,
        "ram_mb": facts.ram_mb or base.ram_mb, "runtime": runtime, "threads": facts.cores,
        "formats": [fmt, *(f for f in base.formats if f != fmt)],
        "precisions": sorted(p50, key=p50.get),
        "peak_gflops": round(peak, 3), "mem_bandwidth_gbs": base.mem_bandwidth_gbs,
        "efficiency": efficiency,
        "notes": [f"efficiency: fitted to {model} {input_size} ({macs / 1e6:.1f}M MACs) "
                  f"measured at {first.threads} threads: fp32 {p50['fp32']:.3f} ms, int8 "
                  f"{p50['int8']:.3f} ms p50 (interleaved, {versions}).",
                  f"peak_gflops: {base.name}'s FLOPs per cycle and core x {facts.cores} cores x "
                  f"{clock:.2f} GHz (raised if a fitted efficiency exceeded {MAX_EFFICIENCY}).",
                  f"simd_width and mem_bandwidth_gbs: from {base.name}; a benchmark does not "
                  "reveal them.",
                  "precisions: fastest first, as measured."],
        "calibration": [asdict(c) for c in calibration],
    }


def calibrate_target(device: str, name: str, out: Path | str, base: str = DEFAULT_TARGET,
                     runtime: str | None = None, model: str = "torchvision:mobilenet_v2",
                     input_size: str = "3x224x224", runs: int = 50, min_seconds: float = 1.0,
                     ssh: SshOptions | None = None, overwrite: bool = False,
                     trust_code: bool = False) -> CalibrationResult:
    """Measure `model` on `device` in fp32 and int8 and write profile `name` to `out`
    (`trust_code`: see `edgeprune.models.load_model`)."""
    out = Path(out)
    _check_out(out, name, overwrite)
    base_profile = load_target(base)
    runtime = runtime or base_profile.runtime
    if runtime not in RUNTIMES:
        raise EdgepruneError(f"--runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
    fmt = format_for_runtime(runtime).name
    backend = get_backend(device, ssh)
    if not isinstance(backend, SshBackend):
        raise EdgepruneError(f"--device {device!r}: calibration measures a device; write "
                             "ssh://user@host[:port]")
    runtime_format = format_for_runtime(runtime)
    facts = backend.facts(list(runtime_format.modules))
    backend.check_versions(facts, runtime_format.modules,
                           runtime_format.install_line(facts.machine))
    if facts.emulated:  # before minutes of exporting and timing under qemu
        raise emulated_error(device, facts.emulation)
    if facts.machine not in ARCHES:
        raise EdgepruneError(f"{device} is a {facts.machine} machine; profiles describe "
                             f"{', '.join(ARCHES)}")
    info(f"device: {facts.cpu_model}, {facts.cores} cores, {facts.machine}, "
         f"{facts.max_mhz or '?'} MHz, {facts.ram_mb or '?'} MB, Python {facts.python}")
    with tempfile.TemporaryDirectory(prefix="edgeprune-calibrate-") as tmp:
        fp32, int8 = _reference_files(model, input_size, fmt, Path(tmp), trust_code)
        macs = count_model(fp32).macs
        options = BenchOptions(threads=facts.cores, runs=runs, min_seconds=min_seconds)
        results = backend.bench([fp32, int8], options)
    emulated = next((r for r in results if r.emulated), None)
    if emulated is not None:  # the runner's own finding, should the check have missed it
        raise emulated_error(device, emulated.emulation)
    measured = {"fp32": results[0], "int8": results[1]}
    data = _profile(name, device, base_profile, facts, fmt, runtime, model, input_size, macs,
                    measured)
    profile = TargetProfile.from_dict(dict(data), str(out))  # the checks a user file gets
    if out.suffix.lower() == ".json":
        import json

        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    else:
        atomic_write_text(out, dumps(data, f"# edgeprune target profile '{name}'; use it with "
                                           f"--target {out}\n"))
    info(f"wrote {out}: fp32 {measured['fp32'].p50_ms:.3f} ms, int8 "
         f"{measured['int8'].p50_ms:.3f} ms p50 at {facts.cores} threads; efficiency "
         f"{data['efficiency']}")
    return CalibrationResult(profile, out, facts, measured, macs)
