"""Atomic outputs: files are written under temporary names in their final folder and renamed
into place together only when the whole block succeeded; on any failure nothing is left."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Staging:
    """Temporary paths in `folder`, each paired with the final path it will be renamed to."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._pairs: list[tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        """A fresh hidden temporary path beside `final` (same folder, so the rename is atomic)."""
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=f".{final.name}.", suffix=".tmp")
        os.close(fd)
        self._pairs.append((Path(name), final))
        return Path(name)

    def write_text(self, final: Path, text: str) -> None:
        """Stage `text` to become the file `final`."""
        self.temp_for(final).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        """Flush every staged file to disk, give it the permissions a plainly created file
        would have (mkstemp makes them private), and rename it to its final path."""
        mode = 0o666 & ~current_umask()
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
    """Stage files in `folder`; commit them if the block succeeds, discard them if it raises."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    stage = Staging(folder)
    try:
        yield stage
        stage.commit()
    finally:
        stage.discard()
