"""Run folders: staged while a run works, published by one rename when it is complete,
with a manifest.json listing every artefact with its size and checksum.

While a run works it lives in a hidden sibling `.<name>.partial`; an interrupted run leaves
that folder so the same command resumes it; only a complete run appears under `<name>`.
A file lock (`.<name>.lock`, holding the owner's PID) lets one process at a time work on a
run; the operating system releases it when the owner dies, so a killed run's lock is taken
over. `--overwrite` replaces only a finished run folder, recognized by its manifest.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.errors import EdgepruneError
from edgeprune.files import TEMP_SUFFIX, atomic_write_text, sha256_file
from edgeprune.jobs.checks import check_output_folder
from edgeprune.manifest import MANIFEST, manifest_problem

CONFIG = "config.json"


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@dataclass
class RunFolder:
    """A run being written: artefacts go into `work`, `publish()` moves them to `final`."""

    final: Path
    config: dict[str, Any]
    work: Path = field(init=False)
    manifest: dict[str, Any] = field(init=False)
    lock: RunLock | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.final = Path(self.final)
        if self.final.name in ("", ".", ".."):  # '--out .' names the folder it is in
            self.final = self.final.resolve()
        self.work = self.final.with_name(f".{self.final.name}.partial")
        self.manifest = {
            "edgeprune": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["edgeprune", *sys.argv[1:]]),
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}",
            "config": self.config,
            "artefacts": [],
            "stages": {},
        }

    @classmethod
    def open(cls, final: Path, config: dict[str, Any], overwrite: bool = False,
             protect: tuple[Path, ...] = ()) -> RunFolder:
        """Prepare a run folder, refusing to replace a finished run unless `overwrite`, and
        never one that holds any of the `protect` paths (the user's input files)."""
        run = cls(final, config)
        check_destination(run.final, overwrite, protect)
        run.lock = RunLock.acquire(run.final)
        try:
            if run.work.exists() and run._stale():
                shutil.rmtree(run.work)
            run.work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.work / CONFIG, json.dumps(config, indent=2, sort_keys=True))
        except BaseException:
            run.lock.release()
            raise
        return run

    def _stale(self) -> bool:
        """A leftover partial run is reused only if it was started with the same config."""
        try:  # compared as JSON: a tuple option and the list it was saved as are the same
            return json.loads((self.work / CONFIG).read_text()) != json.loads(
                json.dumps(self.config, sort_keys=True))
        except (OSError, ValueError):
            return True

    @property
    def resumed(self) -> bool:
        return any(self.work.iterdir())

    def path(self, rel: str) -> Path:
        p = self.work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def record(self, path: Path, kind: str, stage: str, **extra: Any) -> None:
        """Add a written artefact (inside `work`) to the manifest."""
        rel = Path(path).relative_to(self.work).as_posix()
        self.manifest["artefacts"] = [a for a in self.manifest["artefacts"] if a["path"] != rel]
        self.manifest["artefacts"].append({
            "path": rel, "kind": kind, "stage": stage, "size_bytes": Path(path).stat().st_size,
            "sha256": sha256_file(path), **extra})
        self._write_manifest()

    def stage_done(self, stage: str, **info: Any) -> None:
        self.manifest["stages"][stage] = info
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.work / MANIFEST, json.dumps(self.manifest, indent=2))

    def _tidy(self) -> None:
        """Make the folder what the manifest says: resume states and temporary files of
        interrupted writes go; any other file the manifest does not list is recorded."""
        for tmp in self.work.rglob("*.state"):
            tmp.unlink()
        listed = {a["path"] for a in self.manifest["artefacts"]} | {MANIFEST, CONFIG}
        for path in sorted(p for p in self.work.rglob("*") if p.is_file()):
            rel = path.relative_to(self.work).as_posix()
            if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
                path.unlink()
            elif rel not in listed:
                self.record(path, "other", "publish")

    def publish(self) -> Path:
        """Move the finished run into place (replacing an old run when overwriting)."""
        self._tidy()
        self.manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._write_manifest()
        old = self.final.with_name(f".{self.final.name}.old")
        if self.final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.work, self.final)
        shutil.rmtree(old, ignore_errors=True)
        self.release()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Give up the run's lock (publish and discard do; safe to call twice)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def check_destination(final: Path, overwrite: bool, protect: tuple[Path, ...] = ()) -> None:
    """EdgepruneError unless a run may be written to `final`: a new path, or with `overwrite`
    a finished run folder that holds none of the `protect` paths (the user's inputs)."""
    check_output_folder(final)
    if not final.exists():
        return
    problem = manifest_problem(final)
    if problem is not None:
        raise EdgepruneError(f"{final} exists and is not a finished edgeprune run ({problem}); "
                             "edgeprune replaces only its own finished runs: choose another "
                             "--name/--out")
    if not overwrite:
        raise EdgepruneError(f"{final} already holds a run; pass --overwrite or choose another "
                             "--name/--out")
    for p in protect:
        if p is not None and _is_within(Path(p), final):
            raise EdgepruneError(f"--overwrite would delete the input {p} inside {final}; "
                                 "choose another --out")


@dataclass
class RunLock:
    """An exclusive lock on a run's path, held by one process: `.<name>.lock` beside it,
    locked with flock and holding the owner's PID. The operating system drops the lock when
    the owner exits or is killed, so a stale lock file is simply taken over."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, final: Path) -> RunLock:
        path = final.with_name(f".{final.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise EdgepruneError(f"another edgeprune process (PID {owner}) is writing "
                                     f"{final}; wait for it to finish or choose another "
                                     "--name/--out") from None
            try:  # the owner before us may have removed the file after we opened it
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
