"""The CLI: error cases are one line and exit 2; compress runs end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import FINISHED_RUN, assert_one_line_error, run_cli, sha

from edgeprune.models import create_model, load_model

FAST = ["--flops-reduction", "0.5",
        "--epochs", "1", "--bench-runs", "5", "--bench-seconds", "0.1", "--score-samples", "64",
        "--dataset", "synthetic", "--quiet"]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_checkpoint):
    """One real compress run of the tiny checkpoint on the synthetic dataset."""
    runs = tmp_path_factory.mktemp("runs")
    before = sha(tiny_checkpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "compress", "--model", str(tiny_checkpoint),
         "--target", "rpi4", "--runs-dir", str(runs), "--name", "tiny", "--json", *FAST],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "tiny", json.loads(proc.stdout), before, tiny_checkpoint


def test_compress_writes_a_complete_run(compressed):
    run, summary, _, _ = compressed
    manifest = json.loads((run / "manifest.json").read_text())
    kinds = {a["kind"] for a in manifest["artefacts"]}
    assert {"checkpoint", "onnx", "tflite", "sidecar", "scores", "architecture"} <= kinds
    for art in manifest["artefacts"]:
        path = run / art["path"]
        assert path.stat().st_size == art["size_bytes"] and sha(path) == art["sha256"]
    assert {"score", "prune", "finetune", "export-dense", "export-pruned", "bench", "ship",
            "total"} <= set(manifest["stages"])
    assert json.loads((run / "config.json").read_text())["criterion"] == "lrp"
    assert not list(run.parent.glob(".tiny.partial"))


def test_compress_meets_the_flops_target_and_reports_real_figures(compressed):
    run, summary, _, _ = compressed
    dense, pruned = summary["dense"], summary["pruned"]
    assert pruned["macs"] <= 0.5 * dense["macs"] * 1.001
    assert pruned["params"] < dense["params"]
    for fmt in ("onnx", "tflite"):
        d, p = dense["files"][fmt], pruned["files"][fmt]
        assert p["size_bytes"] < d["size_bytes"]
        assert p["max_abs_diff"] <= 1e-4 and p["top1_agreement"] == 1.0
        assert 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p90"]
        assert p["latency_label"].startswith("host")
        assert (run / p["path"]).stat().st_size == p["size_bytes"]
    assert 0.0 <= pruned["accuracy"] <= 1.0


def test_exported_files_run_on_the_device_runner_with_eval(capsys, compressed, tmp_path):
    import numpy as np

    from edgeprune.training import default_device

    run, _, _, _ = compressed
    models = run / "models"
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(capsys, "bench", str(models / "pruned.onnx"),
                                str(models / "pruned.tflite"), "--eval", "--runs", "3",
                                "--min-seconds", "0", "--json", str(out), "--quiet")
    assert code == 0, err
    with np.load(models / "pruned.samples.npz") as z:
        x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    model = load_model(str(run / "model.pt")).model.to(default_device())
    with torch.no_grad():
        torch_acc = float((model(x).argmax(1).cpu() == y).float().mean())
    rows = json.loads(out.read_text())["rows"]
    top1 = [r["measurement"]["eval"]["top1"] for r in rows]
    assert top1 == pytest.approx([torch_acc] * 2, abs=0.011)
    assert all(r["precision"] == "fp32" for r in rows)  # read from the exporter's sidecar


def test_compressed_checkpoint_reloads_with_its_accuracy(compressed, synthetic):
    from edgeprune.training import evaluate

    run, summary, _, _ = compressed
    loaded = load_model(str(run / "model.pt"))
    assert loaded.spec == synthetic.spec
    assert evaluate(loaded.model, synthetic) == pytest.approx(summary["pruned"]["accuracy"])


def test_compress_never_touches_the_input_model(compressed):
    _, _, before, ckpt = compressed
    assert sha(ckpt) == before


def test_existing_run_is_refused_then_overwritten(capsys, compressed):
    run, _, _, ckpt = compressed
    args = ["compress", "--model", str(ckpt), "--runs-dir", str(run.parent), "--name", "tiny",
            *FAST]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "already holds a run; pass --overwrite")
    old_manifest = (run / "manifest.json").read_text()
    code, out, err = run_cli(capsys, *args, "--overwrite", "--formats", "onnx", "--target",
                             "x86-64")
    assert code == 0, err
    assert (run / "manifest.json").read_text() != old_manifest
    assert not (run / "models" / "pruned.tflite").exists()


def test_overwrite_refuses_to_delete_the_input_model(capsys, tmp_path, tiny_checkpoint):
    run = tmp_path / "run"  # a finished run, and the user's model put inside it
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(FINISHED_RUN))
    inside = run / "model.pt"
    inside.write_bytes(tiny_checkpoint.read_bytes())
    code, _, err = run_cli(capsys, "compress", "--model", str(inside), "--out", str(run),
                           "--overwrite", *FAST)
    assert_one_line_error(code, err, "would delete the input")
    assert inside.read_bytes() == tiny_checkpoint.read_bytes()


@pytest.mark.parametrize("args,match", [
    (["--target", "rpi9"], "unknown target"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "CIFAR-10 batches missing"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent"], "does not exist"),
    (["--model", "no_such_pkg.nets:tiny"], "cannot import"),
    (["--flops-reduction", "1.5"], "between 0 and 0.95"),
    (["--criterion", "no-such-criterion"], "no-such-criterion"),
    (["--epochs", "-1"], "--epochs -1.0 must be 0"),
    (["--bn-recalibration", "-5"], "--bn-recalibration -5 must be 0"),
    (["--samples-per-class", "0"], "--samples-per-class 0 must be at least 1"),
])
def test_bad_input_is_one_line_and_leaves_no_run(capsys, tmp_path, tiny_checkpoint, args, match):
    base = ["compress", "--model", str(tiny_checkpoint), "--runs-dir", str(tmp_path), *FAST]
    code, _, err = run_cli(capsys, *base, *args)
    assert_one_line_error(code, err, match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("loss", ["distill", "ce"])
def test_finetune_loss_is_distillation_or_the_papers_cross_entropy(capsys, tmp_path, monkeypatch,
                                                                   tiny_checkpoint, loss):
    import edgeprune.jobs.compress_model as compress_job

    seen = []
    original = compress_job.train

    def recording(model, data, config, teacher=None, **kwargs):
        seen.append(teacher)
        return original(model, data, config, teacher=teacher, **kwargs)

    monkeypatch.setattr(compress_job, "train", recording)
    code, _, err = run_cli(capsys, "compress", *FAST, "--model", str(tiny_checkpoint),
                           "--runs-dir", str(tmp_path), "--name", loss, "--epochs", "0.2",
                           "--finetune", loss, "--formats", "onnx", "--target", "x86-64",
                           "--precision", "fp32")
    assert code == 0, err
    assert len(seen) == 1 and (seen[0] is None) == (loss == "ce")
    stages = json.loads((tmp_path / loss / "manifest.json").read_text())["stages"]
    assert stages["finetune"]["loss"] == loss
    assert f'finetune = "{loss}"' in (tmp_path / loss / "config.toml").read_text()
    code, _, err = run_cli(capsys, "compress", *FAST, "--finetune", "kd", "--runs-dir",
                           str(tmp_path))
    assert_one_line_error(code, err, "--finetune 'kd': choose distill")


@pytest.mark.parametrize(("schedule", "extra"), [("iterative", ["--step", "0.2"]),
                                                ("layer-by-layer", [])])
def test_compress_runs_the_papers_schedules_and_reestimation(capsys, tmp_path, tiny_checkpoint,
                                                             schedule, extra):
    """--schedule iterative re-scores every step (the LRP paper), layer-by-layer prunes one
    layer a step (the AM paper); --reestimate refits the layers that lost inputs."""
    code, _, err = run_cli(capsys, "compress", *FAST, "--model", str(tiny_checkpoint),
                           "--runs-dir", str(tmp_path), "--name", schedule, "--epochs", "0",
                           "--schedule", schedule, *extra, "--reestimate", "--criterion",
                           "l1", "--formats", "onnx", "--target", "x86-64", "--precision",
                           "fp32")
    assert code == 0, err
    stages = json.loads((tmp_path / schedule / "manifest.json").read_text())["stages"]
    prune_stage = stages["prune"]
    assert prune_stage["schedule"] == schedule and prune_stage["rescored"]
    assert prune_stage["residual_stream"] == "prune"
    assert prune_stage["reestimated"] and prune_stage["steps"] >= 2
    assert prune_stage["flops_reduction"] >= 0.5
    assert f'schedule = "{schedule}"' in (tmp_path / schedule / "config.toml").read_text()


def test_compress_without_fine_tuning_recalibrates_batchnorm_only(capsys, tmp_path,
                                                                   tiny_checkpoint, synthetic):
    """--epochs 0 --bn-recalibration N: the kept weights are the dense ones, and every
    BatchNorm holds the statistics of its conv's output on N training images."""
    code, out, err = run_cli(capsys, "compress", *FAST, "--model", str(tiny_checkpoint),
                             "--runs-dir", str(tmp_path), "--name", "recal", "--epochs", "0",
                             "--bn-recalibration", "256", "--samples-per-class", "5",
                             "--formats", "onnx", "--target", "x86-64", "--criterion", "actmax",
                             "--json")
    assert code == 0, err
    stages = json.loads((tmp_path / "recal" / "manifest.json").read_text())["stages"]
    assert stages["bn-recalibration"]["samples"] == 256
    assert stages["finetune"]["epochs"] == 0 and stages["finetune"]["history"] == []
    assert stages["score"]["samples"] == 5 * 4
    pruned = load_model(str(tmp_path / "recal" / "model.pt")).model.eval()
    dense = load_model(str(tiny_checkpoint)).model.eval()
    kept = stages["prune"]["kept"]["0"]
    assert torch.equal(pruned[0].weight, dense[0].weight[kept])
    x = torch.cat([b[0] for b in synthetic.reference(256, seed=1, batch_size=256)])
    with torch.no_grad():
        conv = pruned[0](x)
    torch.testing.assert_close(pruned[1].running_mean, conv.mean((0, 2, 3)), rtol=1e-4,
                               atol=1e-5)
    assert not torch.allclose(pruned[1].running_mean, dense[1].running_mean[kept])


def test_unreadable_and_mismatched_checkpoints(capsys, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "compress", "--model", str(tmp_path / "junk.pt"),
                           "--runs-dir", str(tmp_path / "runs"), *FAST)
    assert_one_line_error(code, err, "cannot read model file")
    torch.save(create_model("resnet20", 1, 4).state_dict(), tmp_path / "r20.pt")
    code, _, err = run_cli(capsys, "compress", "--model", "democnn", "--weights",
                           str(tmp_path / "r20.pt"), "--runs-dir", str(tmp_path / "runs"), *FAST)
    assert_one_line_error(code, err, "do not match the model")
    assert not (tmp_path / "runs").exists()


def test_model_and_dataset_shape_mismatch(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compress", "--model", "demo", "--runs-dir", str(tmp_path),
                           *FAST)
    assert_one_line_error(code, err, "expects 1x28x28 inputs but dataset synthetic gives 1x16x16")


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(["edgeprune", "compress", "--target", "nosuchboard", "--runs-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown target" in proc.stderr


def test_targets_lists_the_required_profiles(capsys):
    code, out, _ = run_cli(capsys, "targets", "--json")
    assert code == 0
    names = {t["name"] for t in json.loads(out)}
    assert {"rpi3", "rpi4", "rpi5", "jetson-nano", "x86-64"} <= names


def test_train_command_writes_a_checkpoint_and_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "m.pt"
    args = ["train", "--model", "democnn", "--dataset", "synthetic", "--epochs", "1",
            "--out", str(out), "--quiet", "--json"]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    result = json.loads(stdout)
    loaded = load_model(str(out))
    assert loaded.meta["test_acc"] == pytest.approx(result["test_acc"])
    assert not out.with_name("m.pt.state").exists()
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "already exists")
