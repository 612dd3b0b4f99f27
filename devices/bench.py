"""Benchmark backends: run `runner.py` on a model file somewhere and return a `BenchResult`.

A backend is anything with a `label` and `bench(model_path, options)`. Only `local` exists
now: it runs the runner with this interpreter in a child process, so the numbers are the
host's and nothing of the host process (torch threads, memory) leaks into them. An SSH backend
fits beside it: copy the runner and the model, run the same `runner_args()`, parse the same
JSON with `parse_runner_output(..., label="device")`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from edgeprune.devices.runner import SCHEMA
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

    def runner_args(self) -> list[str]:
        return ["--threads", str(self.threads), "--warmup", str(self.warmup),
                "--runs", str(self.runs), "--min-seconds", str(self.min_seconds),
                "--seed", str(self.seed)]


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
    label: Label = "host"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["p50"]

    @property
    def p90_ms(self) -> float:
        return self.latency_ms["p90"]

    @classmethod
    def from_runner_json(cls, raw: dict[str, Any], label: Label) -> BenchResult:
        """Type the runner's report; a report of another schema version is an error."""
        if raw.get("schema") != SCHEMA:
            raise EdgepruneError(f"runner report has schema {raw.get('schema')!r}, expected "
                                 f"{SCHEMA!r}: copy the runner.py of this edgeprune version")
        names = [f.name for f in fields(cls) if f.name not in ("label", "raw")]
        missing = [n for n in names if n not in raw]
        if missing:
            raise EdgepruneError(f"runner report lacks {', '.join(missing)}")
        return cls(**{n: raw[n] for n in names}, label=label, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict without the duplicate `raw` copy."""
        d = asdict(self)
        d.pop("raw")
        return d


def parse_runner_output(stdout: str, label: Label) -> BenchResult:
    """The BenchResult in the runner's stdout: its last line that is a JSON object."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise EdgepruneError("the runner printed no JSON report")
    try:
        raw = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"the runner's report is not valid JSON ({e})") from None
    return BenchResult.from_runner_json(raw, label)


def runner_failure(model_path: Path, stderr: str) -> EdgepruneError:
    """A one-line error from the runner's stderr (its last line, without 'error: ')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1].removeprefix("error: ") if lines else "no message"
    return EdgepruneError(f"benchmark of {model_path.name} failed: {last}")


class Backend(Protocol):
    """Where a model is benchmarked; every backend returns the runner's report, labelled."""

    label: Label

    def bench(self, model_path: Path, options: BenchOptions) -> BenchResult: ...


class LocalBackend:
    """This machine, through `sys.executable runner.py` in a child process."""

    label: Label = "host"

    def command(self, model_path: Path, options: BenchOptions) -> list[str]:
        return [sys.executable, str(RUNNER), str(model_path), *options.runner_args()]

    def bench(self, model_path: Path, options: BenchOptions) -> BenchResult:
        try:
            proc = subprocess.run(self.command(model_path, options), capture_output=True,
                                  text=True, timeout=options.timeout_s)
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"benchmark of {model_path.name} did not finish in "
                                 f"{options.timeout_s:g} s; lower --runs or --min-seconds"
                                 ) from None
        if proc.returncode != 0:
            raise runner_failure(model_path, proc.stderr)
        return parse_runner_output(proc.stdout, self.label)


BACKENDS: dict[str, type[Backend]] = {"local": LocalBackend}


def get_backend(name: str) -> Backend:
    """A backend instance by registry name; unknown names get a close-match suggestion."""
    if name not in BACKENDS:
        raise unknown_name_error("backend", name, BACKENDS)
    return BACKENDS[name]()


def bench_local(model_path: Path, threads: int = 1, warmup: int = 10, runs: int = 50,
                min_seconds: float = 1.0, timeout_s: float = 600) -> BenchResult:
    """Benchmark a .tflite/.onnx file on this machine in a child process (label 'host')."""
    options = BenchOptions(threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds,
                           timeout_s=timeout_s)
    return LocalBackend().bench(Path(model_path), options)
