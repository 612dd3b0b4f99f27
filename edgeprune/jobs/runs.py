"""Run folders: staged while a run works, published by one rename when it is complete,
with a manifest.json listing every artefact with its size and checksum.

While a run works it lives in a hidden sibling `.<name>.partial`; an interrupted run leaves
that folder so the same command resumes it; only a complete run appears under `<name>`.
A file lock (`.<name>.lock`, holding the owner's PID) lets one process at a time work on a
run; the operating system releases it when the owner dies, so a killed run's lock is taken
over. `--overwrite` replaces only a finished run folder, recognized by its manifest.

Nothing here writes through a link or leaves the runs folder: a run name is one path
component, the lock is created with O_EXCL and opened with O_NOFOLLOW, and a run folder,
`.partial` folder or lock that is a symbolic link is refused in one line. Replacing a finished
run moves it aside under a fresh name (`.<name>.XXXXXXXX.old`) that is deleted once the new
run is in place; a leftover of a killed publish is removed the next time the run is opened.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__, interrupts
from edgeprune.errors import EdgepruneError
from edgeprune.files import TEMP_SUFFIX, atomic_write_text, sha256_file
from edgeprune.jobs.checks import check_output_folder
from edgeprune.manifest import MANIFEST, manifest_problem

CONFIG = "config.json"
MAX_NAME_BYTES = 200
"""The longest run name: `.<name>.partial` and `.<name>.lock` must fit a file name (255)."""


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run folder (one path component, nothing that leaves the runs
    folder, no control characters), or None when it can."""
    if name in ("", ".", ".."):
        return "is not a folder name"
    if "/" in name or "\\" in name:
        return "has a path separator; a run name is one folder name, not a path"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a control character"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_run_name(name: str, flag: str = "--name") -> None:
    """EdgepruneError unless `name` is a valid run name (see `run_name_problem`)."""
    problem = run_name_problem(name)
    if problem is not None:
        raise EdgepruneError(f"{flag} {name!r} {problem}: give a plain name such as "
                             "'resnet18-rpi4', or --out PATH for a folder elsewhere")


def _refuse_link(path: Path, what: str) -> None:
    """EdgepruneError when `path` is a symbolic link: edgeprune never writes through one."""
    if path.is_symlink():
        raise EdgepruneError(f"{path} ({what}) is a symbolic link; edgeprune never writes "
                             "through links: remove it, or choose another --name/--out")


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
    hint: str | None = field(init=False, default=None)

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
            _refuse_link(run.work, "the unfinished run")
            _remove_old(run.final)
            if run.work.exists() and run._stale():
                shutil.rmtree(run.work)
            run.work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.work / CONFIG, json.dumps(config, indent=2, sort_keys=True))
        except BaseException:
            run.release()
            raise
        run.hint = interrupts.add_hint(f"{run.work} is kept; run the same command again to "
                                       f"resume {run.final}")
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
        for link in [p for p in self.work.rglob("*") if p.is_symlink()]:
            link.unlink()  # a link never ships: it would publish whatever it points to
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
        _refuse_link(self.final, "the run folder")
        old = None
        if self.final.exists():  # a finished run (check_destination): moved aside, then gone
            old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=OLD_SUFFIX,
                                        dir=self.final.parent))
            os.replace(self.final, old)  # a folder replaces the fresh empty one
        os.replace(self.work, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done()
        return self.final

    def discard(self) -> None:
        """Remove the unfinished run and its lock (a failure that leaves nothing to resume)."""
        if not self.work.is_symlink():
            shutil.rmtree(self.work, ignore_errors=True)
        self._done()

    def _done(self) -> None:
        if self.hint is not None:
            interrupts.remove_hint(self.hint)
            self.hint = None
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
    _refuse_link(final, "the run folder")
    _refuse_link(final.with_name(f".{final.name}.partial"), "the unfinished run")
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
        """Lock `final` (EdgepruneError when another process holds it, or when the lock file
        is a symbolic link or not a plain file)."""
        path = final.with_name(f".{final.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open_lock(path)
            if fd is None:
                continue  # removed between our two opens: try again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise EdgepruneError(f"another edgeprune process (PID {owner}) is writing "
                                     f"{final}; wait for it to finish or choose another "
                                     "--name/--out") from None
            if _same_file(fd, path):  # the owner before us may have removed it meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and drop the lock."""
        if _same_file(self.fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
OLD_SUFFIX = ".old"


def _open_lock(path: Path) -> int | None:
    """A descriptor of lock file `path`: created with O_EXCL, or else the existing plain file
    opened with O_NOFOLLOW; None when it vanished in between. A link is refused."""
    try:
        return os.open(path, LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, LOCK_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        _refuse_link(path, "the run's lock")
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EdgepruneError(f"{path} (the run's lock) is not a plain file; remove it, or "
                             "choose another --name/--out")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not followed if a link) is still the file open as `fd`."""
    try:
        st, mine = os.lstat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_old(final: Path) -> None:
    """Remove what a killed publish of `final` left moved aside (`.<name>.XXXXXXXX.old`):
    folders are deleted, links unlinked (never followed)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}{re.escape(OLD_SUFFIX)}")
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry, ignore_errors=True)
