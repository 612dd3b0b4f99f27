"""Atomic outputs, the one home for them: a file or a folder is written under a hidden temporary
name beside its final path and renamed into place only when it is complete, so a reader sees the
old version or the new one, never half of one, and a failure leaves nothing behind.

Temporary files are made private by `mkstemp`/`mkdtemp`; everything published here gets the
permissions a plainly created file or folder would have (0666 / 0777 minus the umask), so the
group a user shares outputs with can read them. Standard library only: importing this module
costs nothing (no torch).

`devices/runner.py` keeps its own small copies on purpose: it runs on devices without edgeprune.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
"""The suffix of the temporary files atomic writes and staging make (`.NAME.*.tmp`)."""


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode `mkdir()` would give a new folder: 0777 minus the umask."""
    return 0o777 & ~current_umask()


@contextmanager
def atomic_writer(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file object whose contents become `path` when the block ends without error:
    written to a temporary file in the same folder, flushed to disk, given plain permissions
    and renamed over `path`; on any error the temporary file is removed and `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_writer`)."""
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Staging:
    """Temporary paths in `folder`, each paired with the final path it will be renamed to, for
    a group of files that must appear together or not at all."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._pairs: list[tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        """A fresh hidden temporary path beside `final` (same folder, so the rename is atomic)."""
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=f".{final.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        self._pairs.append((Path(name), final))
        return Path(name)

    def write_text(self, final: Path, text: str) -> None:
        """Stage `text` to become the file `final`."""
        self.temp_for(final).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        """Flush every staged file to disk, give it plain permissions and rename it into place."""
        mode = file_mode()
        for temp, final in self._pairs:
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(temp, mode)
            os.replace(temp, final)
        self._pairs.clear()

    def discard(self) -> None:
        """Remove staged files and anything a tool wrote beside them (e.g. `<temp>.data`)."""
        for temp, _ in self._pairs:
            for leftover in self.folder.glob(glob.escape(temp.name) + "*"):
                leftover.unlink(missing_ok=True)
        self._pairs.clear()


@contextmanager
def staged(folder: Path) -> Iterator[Staging]:
    """Stage files in `folder`; commit them if the block succeeds, discard them if it raises
    (and remove `folder` too when this call created it and it is left empty)."""
    created = not os.path.lexists(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    stage = Staging(folder)
    try:
        yield stage
        stage.commit()
    except BaseException:
        stage.discard()
        if created and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
        raise
    finally:
        stage.discard()


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into; on success it replaces `final` in one rename
    (an old `final` is moved aside first and deleted after), on failure it is removed. The
    published folder has plain permissions, not `mkdtemp`'s 0700. A link at `final` is
    replaced, never followed: what it points to is left alone."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield stage
        os.chmod(stage, folder_mode())
        old = None
        if os.path.lexists(final):
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
        stage.rename(final)
        if old is not None:
            remove_path(old)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def remove_path(path: Path | str) -> None:
    """Remove `path` without following it: a link or a file is unlinked, a folder deleted
    with everything in it (links inside are unlinked, not followed)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)
