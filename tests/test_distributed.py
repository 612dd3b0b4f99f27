"""Several processes on PyTorch's own engine: `torchrun --nproc-per-node 2 -m edgeprune compress`
on gloo (CPU) against the same run in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ARGS = ["compress", "--flops-reduction", "0.5",
        "--dataset", "synthetic", "--criterion", "lrp", "--score-samples", "128",
        "--score-batch", "32", "--epochs", "3", "--batch-size", "32", "--lr", "0.05",
        "--precision", "fp32", "--bench-runs", "3", "--bench-seconds", "0", "--bench-rounds",
        "2", "--json", "--quiet"]


def _run(command: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def _files(run_dir: Path) -> list[str]:
    """The run's files; in ship/, the shipped model's name (dense or pruned: the faster file
    within tolerance, which host timing under load may decide either way) is left out."""
    names = []
    for path in run_dir.rglob("*"):
        if path.is_file():
            name = path.relative_to(run_dir).as_posix()
            if name.startswith("ship/"):
                name = name.replace("dense", "MODEL").replace("pruned", "MODEL")
            names.append(name)
    return sorted(names)


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The same compress run in one process and in two torchrun processes on gloo."""
    folder = tmp_path_factory.mktemp("distributed")
    scratch = folder / "tmp"
    scratch.mkdir()
    model = ["--model", str(tiny_checkpoint)]
    one = _run([sys.executable, "-m", "edgeprune", *ARGS, *model, "--out",
                str(folder / "one")], scratch)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "edgeprune", *ARGS, *model, "--out",
                str(folder / "two")], scratch)
    assert two.returncode == 0, two.stderr[-3000:]
    return {"one": folder / "one", "two": folder / "two", "tmp": scratch, "stdout": two.stdout}


def test_two_processes_write_one_run_folder_with_the_same_files(runs):
    assert _files(runs["two"]) == _files(runs["one"])
    assert json.loads(runs["stdout"])["run_dir"] == str(runs["two"])  # rank 0 alone reports
    assert list(runs["tmp"].glob("edgeprune-rank*")) == []  # rank 1's scratch folder is gone


def test_sharded_scoring_all_reduces_to_the_scores_of_one_process(runs):
    one = torch.load(runs["one"] / "scores.pt")
    two = torch.load(runs["two"] / "scores.pt")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7)
    pruned = [json.loads((runs[k] / "manifest.json").read_text())["stages"]["prune"]["channels"]
              for k in ("one", "two")]
    assert pruned[0] == pruned[1]


def test_fine_tuning_under_ddp_is_within_noise_of_one_process(runs):
    summaries = [json.loads((runs[k] / "summary.json").read_text()) for k in ("one", "two")]
    stages = [json.loads((runs[k] / "manifest.json").read_text())["stages"]["finetune"]
              for k in ("one", "two")]
    assert [s["processes"] for s in stages] == [1, 2]
    assert stages[0]["epochs"] == stages[1]["epochs"] == 3
    accuracy = [s["pruned"]["accuracy"] for s in summaries]
    assert accuracy[1] > 0.6 and abs(accuracy[1] - accuracy[0]) <= 0.06, accuracy
    assert all(s["images_per_s"] > 0 for s in stages)


def test_options_several_processes_cannot_share_are_refused(tiny_checkpoint, tmp_path):
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", "-m", "edgeprune", *ARGS, "--model",
                   str(tiny_checkpoint), "--schedule", "iterative", "--step-epochs", "1",
                   "--out", str(tmp_path / "run")], tmp_path)
    assert result.returncode != 0
    assert "--step-epochs" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_interrupted_distributed_run_resumes_its_fine_tuning(tiny_checkpoint, tmp_path):
    import signal
    import time

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "edgeprune", *ARGS, "--model",
               str(tiny_checkpoint), "--epochs", "30", "--out", str(tmp_path / "run")]
    command.remove("--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    state = tmp_path / ".run.partial" / "finetune.state"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)  # torchrun stops both ranks, then itself
    first.wait(timeout=120)
    assert state.exists() and not (tmp_path / "run").exists()
    again = _run(command, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming fine-tuning from" in again.stderr
    history = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"][
        "finetune"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
