"""Benchmark backends: run `runner.py` on a model file somewhere and return a `BenchResult`.

A backend is anything with a `label` and `bench(model_path, options)`. `local` runs the runner
with this interpreter in a child process, so the numbers are the host's and nothing of the
host process (torch threads, memory) leaks into them; `ssh` (devices/ssh.py) copies the runner
and the model to a device and runs the same `runner_args()` there. Both parse the same JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from edgeprune.devices.runner import SCHEMA, default_samples_path
from edgeprune.devices.targets import unknown_name_error
from edgeprune.errors import EdgepruneError

RUNNER = Path(__file__).with_name("runner.py")

Label = Literal["host", "device", "estimate"]
"""Where a latency comes from: this machine, the real device, or a model of it."""


@dataclass(frozen=True)
class BenchOptions:
    """How to benchmark: the runner's flags plus the time limit for the whole run."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 1.0
    seed: int = 0
    timeout_s: float = 600
    eval: bool = False
    samples: Path | None = None
    """The --eval batch; None: `<stem>.samples.npz` beside each model."""

    def runner_args(self, samples: str | None = None) -> list[str]:
        """The runner's flags; `samples` is the eval batch's path as the runner sees it."""
        args = ["--threads", str(self.threads), "--warmup", str(self.warmup),
                "--runs", str(self.runs), "--min-seconds", str(self.min_seconds),
                "--seed", str(self.seed)]
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

    @classmethod
    def from_runner_json(cls, raw: dict[str, Any], label: Label,
                         device: str = "local") -> BenchResult:
        """Type the runner's report; a report of another schema version is an error."""
        if raw.get("schema") != SCHEMA:
            raise EdgepruneError(f"runner report has schema {raw.get('schema')!r}, expected "
                                 f"{SCHEMA!r}: copy the runner.py of this edgeprune version")
        ours = ("label", "device", "raw")
        required = [f.name for f in fields(cls) if f.name not in ours and f.default is MISSING]
        optional = [f.name for f in fields(cls) if f.name not in ours and f.name not in required]
        missing = [n for n in required if n not in raw]
        if missing:
            raise EdgepruneError(f"runner report lacks {', '.join(missing)}")
        values = {n: raw[n] for n in required + [n for n in optional if n in raw]}
        return cls(**values, label=label, device=device, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict without the duplicate `raw` copy."""
        d = asdict(self)
        d.pop("raw")
        return d


def parse_runner_output(stdout: str, label: Label, device: str = "local") -> BenchResult:
    """The BenchResult in the runner's stdout: its last line that is a JSON object."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise EdgepruneError("the runner printed no JSON report")
    try:
        raw = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"the runner's report is not valid JSON ({e})") from None
    return BenchResult.from_runner_json(raw, label, device)


def runner_failure(model_path: Path, stderr: str, returncode: int | None = None,
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
    return EdgepruneError(f"benchmark of {model_path.name}{on} failed: {reason}")


class Backend(Protocol):
    """Where a model is benchmarked; every backend returns the runner's report, labelled."""

    label: Label
    device: str

    def bench(self, model_path: Path, options: BenchOptions) -> BenchResult: ...


class LocalBackend:
    """This machine, through `sys.executable runner.py` in a child process."""

    label: Label = "host"

    device: str = "local"

    @classmethod
    def from_device(cls, device: str, ssh: Any = None) -> LocalBackend:
        return cls()

    def command(self, model_path: Path, options: BenchOptions) -> list[str]:
        samples = str(options.samples) if options.samples else None
        return [sys.executable, str(RUNNER), str(model_path), *options.runner_args(samples)]

    def bench(self, model_path: Path, options: BenchOptions) -> BenchResult:
        try:
            proc = subprocess.run(self.command(model_path, options), capture_output=True,
                                  text=True, timeout=options.timeout_s)
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"benchmark of {model_path.name} did not finish in "
                                 f"{options.timeout_s:g} s; lower --runs or --min-seconds"
                                 ) from None
        if proc.returncode != 0:
            raise runner_failure(model_path, proc.stderr, proc.returncode)
        return parse_runner_output(proc.stdout, self.label)


def _ssh_backend(device: str, ssh: Any = None) -> Backend:
    from edgeprune.devices.ssh import SshBackend

    return SshBackend.from_device(device, ssh)


BACKENDS: dict[str, Callable[..., Backend]] = {"local": LocalBackend.from_device,
                                                "ssh": _ssh_backend}
"""Device kinds: `local`, or a URL scheme (`ssh://user@host:port`) -> factory(device, ssh)."""


def get_backend(device: str = "local", ssh: Any = None) -> Backend:
    """The backend for a --device value: `local` or `ssh://[user@]host[:port]`. `ssh` is an
    `SshOptions` for the ssh backend. Unknown kinds get a close-match suggestion."""
    kind = device.split("://", 1)[0] if "://" in device else device
    if kind not in BACKENDS:
        raise unknown_name_error("device kind", kind, BACKENDS)
    return BACKENDS[kind](device, ssh)


def bench_local(model_path: Path, threads: int = 1, warmup: int = 10, runs: int = 50,
                min_seconds: float = 1.0, timeout_s: float = 600, eval: bool = False,
                samples: Path | None = None) -> BenchResult:
    """Benchmark a .tflite/.onnx file on this machine in a child process (label 'host')."""
    options = BenchOptions(threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds,
                           timeout_s=timeout_s, eval=eval, samples=samples)
    return LocalBackend().bench(Path(model_path), options)
