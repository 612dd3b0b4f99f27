"""Benchmark backends: run `runner.py` on model files somewhere and return a `BenchResult` each.

A backend is anything with a `label` and `bench(model_paths, options)`; the files of one call
are measured interleaved in one runner process. `local` runs the runner with this interpreter
in a child process, so the numbers are the host's and nothing of the host process (torch
threads, memory) leaks into them; `ssh` (devices/ssh.py) copies the runner and the models to a
device and runs the same `runner_args()` there. Both parse the same JSON.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgeprune.devices.results import RUNNER, BenchOptions, BenchResult, Label, runner_report
from edgeprune.devices.ssh import SshBackend
from edgeprune.devices.targets import unknown_name_error
from edgeprune.errors import EdgepruneError


class Backend(Protocol):
    """Where a model is benchmarked; every backend returns the runner's report, labelled."""

    label: Label
    device: str

    def bench(self, model_paths: Sequence[Path], options: BenchOptions) -> list[BenchResult]:
        """One result per file, the files measured interleaved in one runner process."""


class LocalBackend:
    """This machine, through `sys.executable runner.py` in a child process."""

    label: Label = "host"

    device: str = "local"

    @classmethod
    def from_device(cls, device: str, ssh: Any = None) -> LocalBackend:
        return cls()

    def command(self, model_paths: Sequence[Path], options: BenchOptions) -> list[str]:
        samples = str(options.samples) if options.samples else None
        return [sys.executable, str(RUNNER), *map(str, model_paths),
                *options.runner_args(samples)]

    def bench(self, model_paths: Sequence[Path], options: BenchOptions) -> list[BenchResult]:
        paths = [Path(p) for p in model_paths]
        limit = options.timeout_s * len(paths)
        try:
            proc = subprocess.run(self.command(paths, options), capture_output=True,
                                  text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"benchmark of {', '.join(p.name for p in paths)} did not "
                                 f"finish in {limit:g} s; lower --runs or --min-seconds"
                                 ) from None
        return runner_report(paths, proc, self.label)


BACKENDS: dict[str, Callable[..., Backend]] = {"local": LocalBackend.from_device,
                                                "ssh": SshBackend.from_device}
"""Device kinds: `local`, or a URL scheme (`ssh://user@host:port`) -> factory(device, ssh)."""


def get_backend(device: str = "local", ssh: Any = None) -> Backend:
    """The backend for a --device value: `local` or `ssh://[user@]host[:port]`. `ssh` is an
    `SshOptions` for the ssh backend. Unknown kinds get a close-match suggestion."""
    kind = device.split("://", 1)[0] if "://" in device else device
    if "@" in kind and "://" not in device:  # 'pi@raspberrypi.local' without its scheme
        raise EdgepruneError(f"--device {device!r} has no scheme; write it as "
                             f"ssh://{device}")
    if kind not in BACKENDS:
        raise unknown_name_error("device kind", kind, BACKENDS)
    return BACKENDS[kind](device, ssh)


def bench_local(model_path: Path, threads: int = 1, warmup: int = 10, runs: int = 50,
                min_seconds: float = 1.0, timeout_s: float = 600, eval: bool = False,
                samples: Path | None = None) -> BenchResult:
    """Benchmark one .tflite/.onnx/.ort file on this machine in a child process (label
    'host'); several files are measured together with `LocalBackend().bench`."""
    options = BenchOptions(threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds,
                           timeout_s=timeout_s, eval=eval, samples=samples)
    return LocalBackend().bench([Path(model_path)], options)[0]
