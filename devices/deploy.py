"""Deploying a ship folder to a device over ssh (`deploy_folder`, for `edgeprune deploy`): copy
it, check the copy's checksums and what the device lacks, and run
the shipped `--eval` batch there. Nothing is ever installed on the device: what is missing is
named with the pip line that would install it.

What is copied is what `SHA256SUMS` lists and nothing else, each entry a plain file of the
folder whose checksum matches here first (`listed_files`): a symbolic link anywhere in the
folder, an entry that names a path (`../x`, `/etc/x`) and a file that differs are refused in
one line, so "SHA256SUMS match" holds for every file copied, the list itself included. A remote
folder with a control character (a newline would split the shell command) is refused too.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.devices.formats import format_of
from edgeprune.devices.results import BenchOptions, BenchResult, runner_report
from edgeprune.devices.ssh import DeviceFacts, SshBackend, remote_path
from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file

CHECKSUMS = "SHA256SUMS"
# Python 3.8+: check the copied files against SHA256SUMS, reading only plain files of this
# folder; prints the checksum of SHA256SUMS itself and the names that differ or are missing.
CHECKSUM_SNIPPET = r"""
import hashlib, os
def digest(name):
    h = hashlib.sha256()
    with open(name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
bad = []
for line in open("SHA256SUMS", encoding="utf-8"):
    if not line.strip():
        continue
    want, name = line.rstrip("\n").split("  ", 1)
    try:
        ok = "/" not in name and os.path.isfile(name) and not os.path.islink(name) \
            and digest(name) == want
    except OSError:
        ok = False
    if not ok:
        bad.append(name)
print("EDGEPRUNE_SUMS " + digest("SHA256SUMS"))
print("EDGEPRUNE_BAD " + " ".join(bad))
"""
SUMS_LINE = re.compile(r"([0-9a-f]{64})  (.+)")
"""A line of SHA256SUMS as `sha256sum` writes it (text mode)."""


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def listed_files(folder: Path) -> list[Path]:
    """The files of ship folder `folder` to copy: every one `SHA256SUMS` lists, each checked
    to be a plain file of the folder whose checksum matches, then `SHA256SUMS` itself. A link
    anywhere in the folder, an entry naming a path, a missing or differing file: one
    EdgepruneError line."""
    if folder.is_symlink():
        raise EdgepruneError(f"{folder} is a symbolic link; deploy copies only a run's own "
                             "ship/ folder: run compress again")
    links = sorted(p.name for p in folder.iterdir() if p.is_symlink())
    if links:
        raise EdgepruneError(f"{folder} holds symbolic links ({', '.join(links)}); deploy "
                             "never copies what a link points to: remove them, or run "
                             "compress again")
    sums = folder / CHECKSUMS
    files: list[Path] = []
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = SUMS_LINE.fullmatch(line)
        name = match.group(2) if match else ""
        where = f"{sums} line {number}"
        if not match:
            raise EdgepruneError(f"{where} is not 'SHA256  NAME'; run compress again")
        if name in (".", "..", CHECKSUMS) or "/" in name or "\\" in name or _control(name):
            raise EdgepruneError(f"{where} names {name!r}, not a file of {folder}; deploy "
                                 "copies only the folder's own files: run compress again")
        path = folder / name
        if not path.is_file():
            raise EdgepruneError(f"{where}: {name} is missing from {folder}; run compress "
                                 "again")
        if sha256_file(path) != match.group(1):
            raise EdgepruneError(f"{path} differs from {CHECKSUMS}; it changed after compress "
                                 "wrote it: run compress again")
        if path in files:
            raise EdgepruneError(f"{where} lists {name} twice; run compress again")
        files.append(path)
    return [*files, sums]


def check_remote_dir(remote_dir: str) -> None:
    """EdgepruneError when `remote_dir` cannot be passed to the device's shell as one path."""
    if not remote_dir or _control(remote_dir):
        raise EdgepruneError(f"--remote-dir {remote_dir!r} is empty or has a control character "
                             "(a newline would split the command on the device); give a "
                             "plain path such as ~/edgeprune/RUN")


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
    """Copy the files `folder`'s SHA256SUMS lists (and it) to `remote_dir` on the device,
    check the copy against it, name what the device lacks and, when it has Python, numpy and
    the runtime, run `runner.py MODEL --eval` there. The remote folder stays: it is the
    deployment."""
    check_remote_dir(remote_dir)
    files = listed_files(folder)
    for needed in (model.name, "runner.py"):
        if folder / needed not in files:
            raise EdgepruneError(f"{folder}/{CHECKSUMS} does not list {needed}; run compress "
                                 "again")
    script = (f"mkdir -p -- {remote_path(remote_dir)} && cd -- {remote_path(remote_dir)} && "
              "pwd")
    proc = backend.run_command(backend.ssh_command(script), timeout_s, "making the folder")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise backend.ssh_error(proc.stderr, f"making {remote_dir}")
    absolute = proc.stdout.strip().splitlines()[-1]  # ~ expanded by the device's shell
    check_remote_dir(absolute)
    quoted = shlex.quote(absolute)
    proc = backend.run_command(backend.scp_command(files, absolute), timeout_s,
                               "copying the folder")
    if proc.returncode != 0:
        raise backend.ssh_error(proc.stderr, "copying the folder")
    _check_copy(backend, quoted, sha256_file(folder / CHECKSUMS), timeout_s)
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


def _check_copy(backend: SshBackend, quoted_dir: str, sums_sha256: str,
                timeout_s: float) -> None:
    """EdgepruneError unless every file the copied SHA256SUMS lists matches it on the device
    and that SHA256SUMS is the one sent (`sums_sha256`)."""
    script = (f"cd -- {quoted_dir} && {remote_path(backend.options.remote_python)} -c "
              f"{shlex.quote(CHECKSUM_SNIPPET)}")
    proc = backend.run_command(backend.ssh_command(script), timeout_s, "checking the copy")
    lines = {ln.split(" ", 1)[0]: ln.split()[1:] for ln in proc.stdout.splitlines()
             if ln.startswith(("EDGEPRUNE_BAD", "EDGEPRUNE_SUMS"))}
    if "EDGEPRUNE_BAD" not in lines:
        raise backend.no_python_error(proc)
    bad = lines["EDGEPRUNE_BAD"]
    if lines.get("EDGEPRUNE_SUMS") != [sums_sha256]:
        bad = [CHECKSUMS, *bad]
    if bad:
        raise EdgepruneError(f"the copy on {backend.device} differs from SHA256SUMS: "
                             f"{', '.join(bad)}; deploy again")
