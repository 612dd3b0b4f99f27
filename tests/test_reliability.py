"""Safe to interrupt, safe to get wrong: run folders that only `--overwrite` of a finished run
replaces, one process per run (a lock), publishing that leaves exactly what the manifest
lists, corrupt resume states set aside, and every bad option or input refused in one line
with exit code 2, with nothing left behind and the inputs untouched."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli, sha

from edgeprune.errors import EdgepruneError
from edgeprune.jobs.runs import RunFolder, RunLock
from edgeprune.models import load_model, save_checkpoint
from edgeprune.models.checkpoint import ArchRef

# A compress run small enough for a unit test: the embedded demo data, a data-free
# criterion, a short fine-tune, one format (ONNX: the quickest to export) and precision, a
# few timed runs.
FAST = ["--flops-reduction", "0.5",
        "--target", "x86-64", "--dataset", "demo", "--criterion", "l1", "--score-samples", "32",
        "--epochs", "0.2", "--eval-limit", "100", "--formats", "onnx", "--precision", "fp32",
        "--bench-runs", "2", "--bench-seconds", "0", "--bench-rounds", "1", "--quiet"]


def tree_state(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) with its SHA-256."""
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_matches_manifest(run: Path) -> None:
    """The folder holds exactly what its manifest lists, byte for byte, and nothing else."""
    manifest = json.loads((run / "manifest.json").read_text())
    listed = {a["path"]: a["sha256"] for a in manifest["artefacts"]}
    on_disk = tree_state(run)
    on_disk.pop("manifest.json")
    on_disk.pop("config.json")  # the run's identity, written before any artefact
    assert on_disk == listed
    assert "finished" in manifest


# ------------------------------------------------------------------------------ folders

def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "data.bin").write_bytes(os.urandom(64))
    before = tree_state(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "compress", *FAST, "--out", str(mine), *extra)
        assert_one_line_error(code, err, "replaces only its own finished runs")
    assert tree_state(tmp_path) == before


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "compress", *FAST, "--out", str(target), *extra)
        assert_one_line_error(code, err, "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("args", [["--runs-dir", "{file}"], ["--out", "{file}/x"]])
def test_outputs_below_a_file_are_refused(tmp_path, capsys, args):
    file = tmp_path / "file"
    file.write_text("x")
    code, _, err = run_cli(capsys, "compress", *FAST, *[a.format(file=file) for a in args])
    assert_one_line_error(code, err, "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("manifest", ['{"x": 1}', "not json", '{"edgeprune": "0.1", '
                                      '"artefacts": []}'])
def test_a_folder_that_only_looks_like_a_run_is_not_read_as_one(tmp_path, capsys, manifest):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text(manifest)
    before = tree_state(tmp_path)
    code, _, err = run_cli(capsys, "report", str(fake))
    assert_one_line_error(code, err, "is not an edgeprune run folder")
    code, _, err = run_cli(capsys, "bench", "x.onnx", "--run", str(fake))
    assert_one_line_error(code, err, "is not an edgeprune run folder")
    assert tree_state(tmp_path) == before


def test_a_second_process_on_the_same_run_fails_at_once_naming_the_first(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from edgeprune.jobs.runs import RunLock; RunLock.acquire(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        code, _, err = run_cli(capsys, "compress", *FAST, "--out", str(run))
        assert_one_line_error(code, err, f"PID {holder.pid}")
        assert time.perf_counter() - t0 < 60  # at once, not after the holder
    finally:
        holder.kill()
        holder.wait()
    assert not run.exists() and not (run.parent / ".r.partial").exists()
    lock = RunLock.acquire(run)  # the holder died: its lock is taken over
    assert (run.parent / ".r.lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (run.parent / ".r.lock").exists()


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "r"
    (tmp_path / ".r.lock").write_text("999999999\n")  # no process holds it
    lock = RunLock.acquire(run)
    with pytest.raises(EdgepruneError, match=f"PID {os.getpid()}"):
        RunLock.acquire(run)  # even the same process cannot take it twice
    lock.release()


def test_publish_removes_temporary_files_and_records_the_rest(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"a": 1})
    run.path("models/dense.onnx").write_bytes(b"model")
    run.record(run.work / "models" / "dense.onnx", "model", "export")
    (run.work / "models" / ".dense.onnx.k3j2.tmp").write_bytes(b"half")  # killed mid-write
    (run.work / "finetune.state").write_bytes(b"resume")
    (run.work / "notes.txt").write_text("written by a later stage, not recorded")
    final = run.publish()
    assert_matches_manifest(final)
    kinds = {a["path"]: a["kind"] for a in json.loads((final / "manifest.json").read_text())[
        "artefacts"]}
    assert kinds == {"models/dense.onnx": "model", "notes.txt": "other"}
    assert not (tmp_path / ".r.lock").exists()


def test_an_empty_or_corrupt_resume_state_is_set_aside(tmp_path, capsys):
    from edgeprune.data import load_dataset
    from edgeprune.training import TrainConfig, train

    demo = load_dataset("demo")
    data = dataclasses.replace(demo, test=demo.test.subset(64))
    for content in (b"", b"not a checkpoint", os.urandom(300)):
        state = tmp_path / "finetune.state"
        state.write_bytes(content)
        model = load_model("demo").model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = train(model, data, TrainConfig(epochs=0.05, batch_size=64, train_limit=128),
                       state_path=state)
        assert result.history and result.history[0]["epoch"] == 1
        assert "discarding unusable training state" in capsys.readouterr().err
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert torch.load(state, weights_only=True)["epoch"] == 1  # a good state replaces it


# -------------------------------------------------------------------------------- options

PROBES = [
    (["compress", "--lr", "-1"], "--lr -1.0 must be"),
    (["compress", "--lr", "nan"], "--lr nan must be"),
    (["compress", "--batch-size", "0"], "--batch-size 0 must be"),
    (["compress", "--eval-limit", "0"], "--eval-limit 0 must be"),
    (["compress", "--score-samples", "0"], "--score-samples 0 must be"),
    (["compress", "--bench-runs", "0"], "--bench-runs 0 must be"),
    (["compress", "--formats", "nosuch"], "--formats nosuch"),
    (["compress", "--flops-reduction", "nan"], "--flops-reduction nan"),
    (["compress", "--residual-stream", "coupled"], "--residual-stream 'coupled': choose one"),
    (["sweep", "--lr", "0"], "--lr 0.0 must be"),
    (["train", "--lr", "-1", "--out", "{tmp}/m.pt"], "--lr -1.0 must be"),
    (["train", "--batch-size", "0", "--out", "{tmp}/m.pt"], "--batch-size 0 must be"),
    (["train", "--out", "{tmp}"], "is a folder"),
    (["prune", "demo", "--step", "2", "--out", "{tmp}/p.pt"], "--step 2.0 must be"),
    (["prune", "demo", "--out", "{tmp}"], "is a folder"),
    (["prune", "demo", "--residual-stream", "x", "--out", "{tmp}/p.pt"],
     "--residual-stream x must be prune or keep"),
    (["export", "demo", "--out", "{tmp}/file.txt"], "is a file"),
    (["bench", "{model}", "--json", "{tmp}"], "is a folder"),
]


@pytest.mark.parametrize(("args", "message"), PROBES, ids=[" ".join(a) for a, _ in PROBES])
def test_every_bad_option_is_one_line_before_any_work(tmp_path, capsys, args, message):
    model = tmp_path / "never-read.onnx"
    (tmp_path / "file.txt").write_text("x")
    before = tree_state(tmp_path)
    argv = [a.format(tmp=tmp_path, model=model) for a in args]
    if argv[0] in ("compress", "sweep"):
        argv += ["--runs-dir", str(tmp_path / "runs"), "--dataset", "demo"]
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, message)
    assert time.perf_counter() - t0 < 30  # refused before training, export or benchmarks
    assert tree_state(tmp_path) == before


def test_a_config_with_nan_epochs_is_refused(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("epochs = nan\n")
    code, _, err = run_cli(capsys, "compress", "--config", str(config))
    assert_one_line_error(code, err, "--epochs nan must be")


# ----------------------------------------------------------------------------- input data

def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_idx_files_with_more_images_than_labels_are_refused(tmp_path):
    from edgeprune.data import load_dataset

    rng = np.random.default_rng(0)
    for prefix, n_images, n_labels in (("train", 200, 150), ("t10k", 50, 50)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 255, (n_images, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n_labels))
    with pytest.raises(EdgepruneError, match="200 images but 150 labels"):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_nan_weights_are_named(tmp_path):
    loaded = load_model("demo")
    state = loaded.model.state_dict()
    name = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 4)
    state[name][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    save_checkpoint(path, loaded.model, ArchRef("democnn", {"in_channels": 1,
                                                             "num_classes": 10}), loaded.spec)
    with pytest.raises(EdgepruneError, match=f"{name} holds 1 NaN or infinite value"):
        load_model(str(path))


# --------------------------------------------------------------------- failures mid-run

def test_a_full_disk_mid_run_is_one_line_and_leaves_no_partial_run(tmp_path, capsys,
                                                                   monkeypatch):
    import edgeprune.jobs.compress as compress_job

    def full(inputs, run, scores):
        raise OSError(errno.ENOSPC, "No space left on device", str(run.work / "scores.pt"))

    monkeypatch.setattr(compress_job, "_run_stages", full)
    code, _, err = run_cli(capsys, "compress", *FAST, "--runs-dir", str(tmp_path))
    assert_one_line_error(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no run, no .partial, no lock


def test_an_unexpected_failure_is_one_line_too(tmp_path, capsys, monkeypatch):
    import edgeprune.jobs.compress as compress_job

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(compress_job, "_run_stages", broken)
    code, _, err = run_cli(capsys, "compress", *FAST, "--runs-dir", str(tmp_path))
    assert_one_line_error(code, err, "unexpected RuntimeError: something nobody expected")
    assert "second line" not in err
    assert list(tmp_path.iterdir()) == []  # no run, no .partial, no lock


def test_out_dot_is_never_replaced(tmp_path, capsys, monkeypatch):
    (tmp_path / "work.txt").write_text("the user's folder")
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "compress", *FAST, "--out", ".", *extra)
        assert_one_line_error(code, err, "replaces only its own finished runs")
    assert tree_state(tmp_path) == before


# ------------------------------------------------------------------------------ Python API

def test_prune_refuses_what_it_cannot_work_on():
    from edgeprune.pruning import prune

    model = load_model("demo").model
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(EdgepruneError, match="scores for '0' must be a tensor"):
        prune(model, x, scores={"0": "high"})
    with pytest.raises(EdgepruneError, match="must be a .layer name: tensor. dict"):
        prune(model, x, scores="lrp")
    with pytest.raises(EdgepruneError, match="fails on example_inputs of shape"):
        prune(model, torch.zeros(1, 3, 32, 32))
    with torch.device("meta"):
        empty = load_model("democnn", in_channels=1, num_classes=10).model
    with pytest.raises(EdgepruneError, match="on the meta device"):
        prune(empty, x)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    with pytest.raises(EdgepruneError, match="holds NaN or infinite values"):
        prune(model, x)


def test_export_model_without_a_spec_says_what_it_needs(tmp_path):
    from edgeprune.export import export_model

    model = load_model("demo").model
    with pytest.raises(EdgepruneError, match="needs the model's InputSpec"):
        export_model(model, None, tmp_path / "out", torch.zeros(4, 1, 28, 28))
    assert list(tmp_path.iterdir()) == []
