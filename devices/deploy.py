"""Deploying a ship folder to a device over ssh (`deploy_folder`, for `edgeprune deploy`): copy
it, check the copy's checksums and what the device lacks, and run
the shipped `--eval` batch there. Nothing is ever installed on the device: what is missing is
named with the pip line that would install it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.devices.formats import format_of
from edgeprune.devices.results import BenchOptions, BenchResult, runner_report
from edgeprune.devices.ssh import DeviceFacts, SshBackend, remote_path
from edgeprune.errors import EdgepruneError

# Python 3.8+: check the copied files against SHA256SUMS; prints the names that differ.
CHECKSUM_SNIPPET = r"""
import hashlib, sys
bad = []
for line in open("SHA256SUMS"):
    digest, name = line.rstrip("\n").split("  ", 1)
    h = hashlib.sha256()
    with open(name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != digest:
        bad.append(name)
print("EDGEPRUNE_BAD " + " ".join(bad))
"""


@dataclass
class Deployment:
    """Where the folder went, what the device lacks (pip packages), and the shipped model's
    `--eval` run there."""

    device: str
    remote_dir: str
    files: list[str]
    facts: DeviceFacts
    missing: list[str]
    result: BenchResult | None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "remote_dir": self.remote_dir, "files": self.files,
                "facts": self.facts.__dict__, "missing": self.missing,
                "result": self.result.to_dict() if self.result else None}


def _pip_names(model: Path, requirements: Path) -> dict[str, str]:
    """The pinned requirement of each thing the shipped model needs, by module name."""
    pins = {line.split("=")[0].split(">")[0].strip().lower(): line.strip()
            for line in requirements.read_text().splitlines()
            if line.strip() and not line.startswith("#")} if requirements.is_file() else {}
    runtime = format_of(model).package
    return {"numpy": pins.get("numpy", "numpy"), "PIL": pins.get("pillow", "pillow"),
            "runtime": pins.get(runtime, runtime)}


def deploy_folder(backend: SshBackend, folder: Path, remote_dir: str, model: Path,
                  options: BenchOptions, timeout_s: float = 600) -> Deployment:
    """Copy every file of `folder` to `remote_dir` on the device, check the copy against its
    SHA256SUMS, name what the device lacks and, when it has Python, numpy and the runtime,
    run `runner.py MODEL --eval` there. The remote folder stays: it is the deployment."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    script = f"mkdir -p {remote_path(remote_dir)} && cd {remote_path(remote_dir)} && pwd"
    proc = backend.run_command(backend.ssh_command(script), timeout_s, "making the folder")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise backend.ssh_error(proc.stderr, f"making {remote_dir}")
    absolute = proc.stdout.strip().splitlines()[-1]  # ~ expanded by the device's shell
    quoted = shlex.quote(absolute)
    proc = backend.run_command(backend.scp_command(files, absolute), timeout_s,
                               "copying the folder")
    if proc.returncode != 0:
        raise backend.ssh_error(proc.stderr, "copying the folder")
    _check_copy(backend, quoted, timeout_s)
    runtime_modules = list(format_of(model).modules)
    facts = backend.facts([*runtime_modules, "PIL"], timeout_s)
    pins = _pip_names(model, folder / "requirements.txt")
    missing = [pins[k] for k, present in (
        ("numpy", facts.has("numpy")),
        ("runtime", any(facts.has(m) for m in runtime_modules)),
        ("PIL", facts.has("PIL"))) if not present]
    deployment = Deployment(backend.device, absolute, [p.name for p in files], facts,
                            missing, None)
    if any(p != pins["PIL"] for p in missing):  # the runner needs numpy and the runtime
        return deployment
    args = " ".join(shlex.quote(a) for a in [model.name, *options.runner_args()])
    script = (f"cd {quoted} && {remote_path(backend.options.remote_python)} runner.py {args} "
              "--eval")
    proc = backend.run_command(backend.ssh_command(script), timeout_s, "the --eval run")
    if proc.returncode == 255:
        raise backend.ssh_error(proc.stderr, "the --eval run")
    deployment.result = runner_report([model], proc, "device", backend.device,
                                      backend.device)[0]
    return deployment


def _check_copy(backend: SshBackend, quoted_dir: str, timeout_s: float) -> None:
    script = (f"cd {quoted_dir} && {remote_path(backend.options.remote_python)} -c "
              f"{shlex.quote(CHECKSUM_SNIPPET)}")
    proc = backend.run_command(backend.ssh_command(script), timeout_s, "checking the copy")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("EDGEPRUNE_BAD")), None)
    if line is None:
        raise backend.no_python_error(proc)
    bad = line.split()[1:]
    if bad:
        raise EdgepruneError(f"the copy on {backend.device} differs from SHA256SUMS: "
                             f"{', '.join(bad)}; deploy again")
