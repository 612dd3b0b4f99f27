"""The run report: one self-contained report.html plus report.json, built from a run folder.

`build_report(run_dir)` reads only the files of that folder (manifest.json, summary.json,
config.json/config.toml, scores.pt, model sidecars, bench records, atlas/*.png).
"""

from edgeprune.report.build import build_report
from edgeprune.report.load import RunData, load_run
from edgeprune.report.numbers import collect

__all__ = ["RunData", "build_report", "collect", "load_run"]
