"""What a benchmark run is and returns, shared by every backend: the runner's options
(`BenchOptions`), its report typed (`BenchResult`, one per file, labelled with where it was
measured), the parsing of the runner's output and failures, and `Ratio`, the ratio of two
files measured interleaved with its spread over the rounds."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edgeprune.devices.runner import SCHEMA, default_samples_path
from edgeprune.errors import EdgepruneError

RUNNER = Path(__file__).with_name("runner.py")

Label = Literal["host", "device", "emulated", "estimate"]
"""Where a latency comes from: this machine, the real device, a machine emulated by qemu (the
right code and numerics, a meaningless time: never used for a choice, a calibration or a
speedup claim), or a model of the device."""


@dataclass(frozen=True)
class BenchOptions:
    """How to benchmark: the runner's flags plus the time limit for the whole run."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 1.0
    seed: int = 0
    rounds: int = 10
    timeout_s: float = 600
    eval: bool = False
    samples: Path | None = None
    """The --eval batch; None: `<stem>.samples.npz` beside each model."""

    def runner_args(self, samples: str | None = None) -> list[str]:
        """The runner's flags; `samples` is the eval batch's path as the runner sees it."""
        args = ["--threads", str(self.threads), "--warmup", str(self.warmup),
                "--runs", str(self.runs), "--min-seconds", str(self.min_seconds),
                "--seed", str(self.seed), "--rounds", str(self.rounds)]
        if self.eval:
            args.append("--eval")
            if samples:
                args += ["--samples", samples]
        return args

    def samples_for(self, model_path: Path) -> Path:
        """The local eval batch for `model_path`."""
        return Path(self.samples) if self.samples else default_samples_path(Path(model_path))

    def to_dict(self) -> dict[str, Any]:
        """What makes two runs comparable, recorded with every result."""
        d = asdict(self)
        d["samples"] = str(self.samples) if self.samples else None
        return d


@dataclass
class BenchResult:
    """The runner's JSON report, typed; `label` says where it was measured."""

    model: str
    file_size_bytes: int
    format: str
    runtime: str
    runtime_version: str
    threads: int
    warmup: int
    runs: int
    min_seconds: float
    seed: int
    timed_seconds: float
    inputs: list[dict[str, Any]]
    load_ms: float
    first_inference_ms: float
    latency_ms: dict[str, float]
    peak_rss_mb: float | None
    host: dict[str, Any]
    python: str
    precision: str | None = None
    eval: dict[str, Any] | None = None
    rounds_p50_ms: list[float] = field(default_factory=list)
    label: Label = "host"
    device: str = "local"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["p50"]

    @property
    def p90_ms(self) -> float:
        return self.latency_ms["p90"]

    @property
    def p99_ms(self) -> float:
        return self.latency_ms["p99"]

    @property
    def top1(self) -> float | None:
        return self.eval["top1"] if self.eval else None

    @property
    def emulated(self) -> bool:
        """Whether the runner ran under emulation (its report's `host.emulated`)."""
        return bool(self.host.get("emulated"))

    @property
    def emulation(self) -> str:
        """Why the runner found itself emulated ('' when it was not)."""
        return str(self.host.get("emulation") or "")

    @classmethod
    def from_runner_json(cls, raw: dict[str, Any], label: Label,
                         device: str = "local") -> BenchResult:
        """Type one file's entry of the runner's report."""
        ours = ("label", "device", "raw")
        required = [f.name for f in fields(cls) if f.name not in ours and f.default is MISSING]
        optional = [f.name for f in fields(cls) if f.name not in ours and f.name not in required]
        missing = [n for n in required if n not in raw]
        if missing:
            raise EdgepruneError(f"runner report lacks {', '.join(missing)}")
        values = {n: raw[n] for n in required + [n for n in optional if n in raw]}
        if (raw.get("host") or {}).get("emulated") and label != "estimate":
            label = "emulated"  # whatever the backend expected, qemu timed it
        return cls(**values, label=label, device=device, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict without the duplicate `raw` copy."""
        d = asdict(self)
        d.pop("raw")
        return d


def parse_runner_output(stdout: str, label: Label, device: str = "local") -> list[BenchResult]:
    """The BenchResults in the runner's stdout (its last line that is a JSON object), one per
    model file in the order given; a report of another schema version is an error."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise EdgepruneError("the runner printed no JSON report")
    try:
        raw = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"the runner's report is not valid JSON ({e})") from None
    if raw.get("schema") != SCHEMA or not isinstance(raw.get("results"), list):
        raise EdgepruneError(f"runner report has schema {raw.get('schema')!r}, expected "
                             f"{SCHEMA!r}: copy the runner.py of this edgeprune version")
    return [BenchResult.from_runner_json(r, label, device) for r in raw["results"]]


@dataclass(frozen=True)
class Ratio:
    """`value` = a / b for two files timed in the same rounds: the median over rounds of the
    per-round ratio of medians, and its lowest and highest round (`low`, `high`)."""

    value: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, a: BenchResult, b: BenchResult) -> Ratio:
        pairs = [(x, y) for x, y in zip(a.rounds_p50_ms, b.rounds_p50_ms, strict=False)
                 if x > 0 and y > 0]
        if not pairs:  # no rounds recorded: the whole runs' medians
            value = a.p50_ms / b.p50_ms if b.p50_ms > 0 else float("nan")
            return cls(value, value, value, 0)
        ratios = sorted(x / y for x, y in pairs)
        n = len(ratios)
        median = ratios[n // 2] if n % 2 else (ratios[n // 2 - 1] + ratios[n // 2]) / 2
        return cls(median, ratios[0], ratios[-1], n)

    def __str__(self) -> str:
        return f"{self.value:.2f}x ({self.low:.2f}-{self.high:.2f})"


def runner_failure(model_paths: Sequence[Path], stderr: str, returncode: int | None = None,
                   where: str = "") -> EdgepruneError:
    """A one-line error from the runner's stderr (its last line, without 'error: '); a
    crash without a message names the exit status instead."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        reason = lines[-1].removeprefix("error: ")
    elif returncode is not None and (returncode < 0 or returncode > 128):
        signal = -returncode if returncode < 0 else returncode - 128  # local or via a shell
        reason = f"the runner was killed by signal {signal}"
    else:
        reason = f"the runner exited with status {returncode} and no message"
    on = f" on {where}" if where else ""
    names = ", ".join(p.name for p in model_paths)
    return EdgepruneError(f"benchmark of {names}{on} failed: {reason}")


def runner_report(model_paths: Sequence[Path], proc: subprocess.CompletedProcess, label: Label,
                  device: str = "local", where: str = "") -> list[BenchResult]:
    """The BenchResults of a finished runner process, or its failure as one EdgepruneError
    naming the files and `where` (the device)."""
    if proc.returncode != 0:
        raise runner_failure(model_paths, proc.stderr, proc.returncode, where)
    return parse_runner_output(proc.stdout, label, device)
