"""Fault injection: `edgeprune compress` killed with SIGKILL inside each stage, then the same
command run again, ends in a complete run folder whose every file matches the manifest's
SHA-256, with no stray files beside it.

Each killed run is a real `edgeprune compress` process in which one function of the stage
sends SIGKILL to its own process (before or after doing its work), so the kill lands at a
known point; nothing in edgeprune knows about the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


# ------------------------------------------------------------------ SIGTERM, SIGHUP, Ctrl-C

SIGNALLING = """
import importlib, os, signal, sys
module, name, signame = sys.argv[1], sys.argv[2], sys.argv[3]
owner, attr = (name.split(".") + [None])[:2]
target = importlib.import_module(module)
holder = getattr(target, owner) if attr else target
original = getattr(holder, attr or owner)
def signalling(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, signame))
    return original(*args, **kwargs)
setattr(holder, attr or owner, signalling)
from edgeprune.cli import main
sys.argv = ["edgeprune", *sys.argv[4:]]
main()
"""


def interrupted(where: tuple[str, str], signame: str, args: list[str], cwd: Path
                ) -> subprocess.CompletedProcess:
    """Run `edgeprune ARGS` in `cwd`; the process sends itself `signame` when the function
    `where` (module, [Class.]function) is called."""
    return subprocess.run([sys.executable, "-c", SIGNALLING, *where, signame, *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def last_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in stderr, stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_signal_during_export_removes_its_temporary_files(tmp_path, signame, code):
    """Stopped while the .onnx and .json are staged: both temporary files go, nothing is
    published, one line says so, and the exit code is 128 + the signal."""
    proc = interrupted(("edgeprune.files", "Staging.commit"), signame,
                       ["export", "demo", "--format", "onnx", "--out", "out"], tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"interrupted by {signame}: temporary files "
                                             "were removed")
    assert list(tmp_path.rglob("*")) == []  # no .tmp, no .onnx, not even the folder it made


@pytest.mark.parametrize(("signame", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_compress_releases_its_lock_and_says_how_to_resume(tmp_path, signame,
                                                                          code):
    proc = interrupted(("edgeprune.jobs.compress_model", "reference_batches"), signame,
                       ["compress", *FAST, "--runs-dir", "runs", "--name", "r"], tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith(f"interrupted by {signame}: runs/.r.partial is kept; run the same "
                           "command again to resume runs/r"), line
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".r.partial"]  # no lock
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_handlers_unwind_like_ctrl_c_and_exit_with_the_signals_code():
    from edgeprune import interrupts

    previous = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    try:
        interrupts.install()
        hint = interrupts.add_hint("RUN is kept; run the same command again to resume it")
        cleaned = []
        with pytest.raises(interrupts.Interrupted) as stop:
            try:
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(5)  # the handler raises before this ends
            finally:
                cleaned.append(True)
        assert stop.value.code == 129 and cleaned == [True]
        assert interrupts.message(signal.SIGHUP) == ("interrupted by SIGHUP: RUN is kept; run "
                                                     "the same command again to resume it")
        interrupts.remove_hint(hint)
        assert "nothing was kept" in interrupts.message(signal.SIGTERM)
    finally:
        interrupts._received = None  # noqa: SLF001 - nothing to say at this test's exit
        for s, handler in previous.items():
            signal.signal(s, handler)
