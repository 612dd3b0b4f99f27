"""`report_run`: what `edgeprune report` does: rebuild a run folder's report.html and
report.json and keep its manifest true."""

from __future__ import annotations

from pathlib import Path

from edgeprune.manifest import read_manifest
from edgeprune.report import build_report
from edgeprune.report.build import refresh_manifest


def report_run(run_dir: Path | str, out: Path | str | None = None) -> tuple[Path, Path]:
    """Write the report of the run in `run_dir` into `out` (default: the run folder); when it
    goes into the run folder, the manifest's sizes and checksums of the report files are
    updated. Returns the paths of report.html and report.json. The folder must hold a
    finished run (see `edgeprune.manifest`)."""
    read_manifest(run_dir)
    html_path, json_path = build_report(run_dir, out)
    if out is None or Path(out).resolve() == Path(run_dir).resolve():
        refresh_manifest(run_dir, (html_path, json_path))
    return html_path, json_path
