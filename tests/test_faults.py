"""Fault injection: `edgeprune compress` killed with SIGKILL inside each stage, then the same
command run again, ends in a complete run folder whose every file matches the manifest's
SHA-256, with no stray files beside it.

Each killed run is a real `edgeprune compress` process in which one function of the stage
sends SIGKILL to its own process (before or after doing its work), so the kill lands at a
known point; nothing in edgeprune knows about the test."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from test_reliability import FAST, assert_matches_manifest

# stage: (module, function, which call, kill before or after it runs)
KILL_POINTS = {
    "score": ("edgeprune.jobs.compress_model", "reference_batches", 1, "before"),
    "prune": ("edgeprune.jobs.compress_model", "prune", 1, "before"),
    "fine-tune": ("edgeprune.training.loop", "_save_state", 1, "after"),
    "export": ("edgeprune.jobs.compress_files", "export_model", 2, "after"),
    "bench": ("edgeprune.jobs.compress_files", "measure_files", 1, "before"),
    "report": ("edgeprune.jobs.compress", "_report", 1, "after"),
}

HARNESS = """
import importlib, os, signal, sys
module, name, nth, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
target = importlib.import_module(module)
original, calls = getattr(target, name), []
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if len(calls) == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(target, name, killing)
from edgeprune.cli import main
sys.argv = ["edgeprune", *sys.argv[5:]]
main()
"""


def compress(args: list[str], kill: tuple[str, str, int, str] | None
             ) -> subprocess.CompletedProcess:
    if kill is None:
        command = [sys.executable, "-m", "edgeprune", *args]
    else:
        command = [sys.executable, "-c", HARNESS, *map(str, kill), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_killed_in_every_stage_then_rerun_gives_a_complete_run(tmp_path):
    runs = tmp_path / "runs"
    loud = [a for a in FAST if a != "--quiet"]  # the stage messages show the resume
    args = ["compress", *loud, "--runs-dir", str(runs), "--name", "r"]
    final, partial = runs / "r", runs / ".r.partial"
    for stage, kill in KILL_POINTS.items():
        proc = compress(args, kill)
        assert proc.returncode == -signal.SIGKILL, f"{stage}: {proc.stderr[-2000:]}"
        assert not final.exists() and partial.is_dir(), stage  # nothing half-published
    proc = compress(args, None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming fine-tuning" in proc.stderr
    assert_matches_manifest(final)
    assert sorted(p.name for p in runs.iterdir()) == ["r"]  # no .partial, no lock, no .old
    summary = json.loads((final / "summary.json").read_text())
    assert summary["shipped"] is not None and Path(final / summary["shipped"]["path"]).is_file()
