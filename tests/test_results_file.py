"""The results file the benchmarks resume from (benchmarks/results_file.py): two runs writing
to one file keep each other's results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from results_file import ResultsFile  # noqa: E402


def test_a_run_does_not_put_back_what_another_run_re_measured(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    first = ResultsFile(path)
    first.save("a", {"ok": False}, show="")
    ResultsFile(path).save("a", {"ok": True}, show="")  # a second run re-measures a
    first.save("b", {"ok": True}, show="")  # the first run, still holding its old a
    assert json.loads(path.read_text()) == {"a": {"ok": True}, "b": {"ok": True}}
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left
