"""The target as a contract: compress exports candidates at the target's precisions, measures
them side by side, ships the fastest within the tolerance into RUN/ship/, recovers int8 by
quantization-aware training, aims at a latency budget, and measures on a device over ssh."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli

from edgeprune.errors import EdgepruneError
from edgeprune.jobs.candidates import Candidate, choose, judge
from edgeprune.jobs.compress import compress
from edgeprune.models import load_model

pytestmark = pytest.mark.usefixtures("quiet_single_thread")
FAST = dict(flops_reduction=0.5,
            dataset="synthetic", epochs=3, batch_size=32, lr=0.05, bench_runs=5,
            bench_seconds=0, bench_rounds=4, score_samples=64, criterion="l1")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("ship") / "run"
    return compress(model=str(tiny_checkpoint), out=str(out), **FAST)


def test_candidates_are_every_model_at_every_precision_measured_side_by_side(run):
    names = [c["name"] for c in run.candidates]
    assert names == ["dense fp32 tflite", "dense int8 tflite", "pruned fp32 tflite",
                     "pruned int8 tflite"]
    for c in run.candidates:
        assert 0 < c["accuracy"] <= 1 and c["size_bytes"] > 0
        assert c["latency_label"].startswith("host")
        sp = c["speedup"]
        assert sp["rounds"] == 4 and sp["low"] <= sp["value"] <= sp["high"]
        assert c["estimate_ms"] > 0
    ints = {c["model"]: c for c in run.candidates if c["precision"] == "int8"}
    floats = {c["model"]: c for c in run.candidates if c["precision"] == "fp32"}
    assert all(ints[m]["size_bytes"] < 0.4 * floats[m]["size_bytes"] for m in ints)
    assert floats["dense"]["speedup"]["value"] == 1.0


def test_the_fastest_candidate_within_the_tolerance_on_the_target_estimate_ships(run):
    fit = [c for c in run.candidates if c["drop_points"] <= run.max_drop]
    fastest = max(fit, key=lambda c: (c["estimate_speedup"], c["speedup"]["value"]))
    assert run.shipped["path"] == fastest["path"]  # no device: the rpi4 estimate decides
    assert run.shipped["within_tolerance"] and "fastest of" in run.reason
    assert run.decided_by.startswith("the rpi4 estimate") and "which decided" in run.reason
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["shipped"]["path"] == run.shipped["path"]
    assert len(summary["candidates"]) == 4
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["shipped"]["file"]["path"] == run.shipped["path"]
    assert len(report["candidates"]) == 4
    page = (run.run_dir / "report.html").read_text()
    assert f"<b>Shipped: {run.shipped['name']}</b>" in page


def test_the_ship_folder_holds_what_a_device_needs_and_checks_out(run):
    ship = run.run_dir / "ship"
    model = Path(run.shipped["path"]).name
    assert {model, f"{model}.json", "runner.py", "predict.py", "preprocess.py",
            "requirements.txt", "SHA256SUMS", "README.md"} <= {p.name for p in ship.iterdir()}
    for line in (ship / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((ship / name).read_bytes()).hexdigest() == digest
    import importlib.metadata

    pin = f"ai-edge-litert=={importlib.metadata.version('ai-edge-litert')}"
    assert pin in (ship / "requirements.txt").read_text().splitlines()
    assert model in (ship / "README.md").read_text()
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    listed = {a["path"] for a in manifest["artefacts"]}
    assert {f"ship/{p.name}" for p in ship.iterdir()} <= listed
    proc = subprocess.run([sys.executable, "runner.py", model, "--eval", "--runs", "2",
                           "--min-seconds", "0", "--rounds", "1"], cwd=ship,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["eval"]["samples"] > 0


def test_predict_classifies_image_files_as_pytorch_does(run, synthetic, tiny_checkpoint,
                                                       tmp_path):
    """predict.py reads PNG files with Pillow alone and agrees with the PyTorch model."""
    from PIL import Image

    x, y = synthetic.test.__getitems__(list(range(8)))
    files = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.fromarray(synthetic.test.images[i, 0].numpy()).save(path)
        files.append(str(path))
    proc = subprocess.run([sys.executable, "predict.py", *files, "--json"],
                          cwd=run.run_dir / "ship", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    predicted = [r["top"][0]["index"] for r in json.loads(proc.stdout)]
    source = run.run_dir / "model.pt" if run.shipped["model"] == "pruned" else tiny_checkpoint
    model = load_model(str(source)).model
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    assert sum(p == e for p, e in zip(predicted, expected, strict=True)) >= 7  # int8 may flip 1
    bad = subprocess.run([sys.executable, "predict.py", str(tmp_path / "nope.jpg")],
                         cwd=run.run_dir / "ship", capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1  # one line, no TFLite log
    assert bad.stderr.startswith(f"error: cannot read image {tmp_path / 'nope.jpg'}: [Errno 2]")


def test_one_precision_can_be_forced(tiny_checkpoint, tmp_path):
    result = compress(model=str(tiny_checkpoint), out=str(tmp_path / "fp32"), precision="fp32",
                      **FAST)
    assert {c["precision"] for c in result.candidates} == {"fp32"}
    assert not list((tmp_path / "fp32" / "models").glob("*.int8.*"))


def test_an_onnx_target_ships_a_verified_ort_twin(tiny_checkpoint, tmp_path):
    result = compress(model=str(tiny_checkpoint), out=str(tmp_path / "x86"), target="x86-64",
                      formats="onnx", **FAST)
    ship = result.run_dir / "ship"
    ort = next(ship.glob("*.ort"))
    sidecar = json.loads((ship / f"{ort.name}.json").read_text())
    assert sidecar["format"] == "ort" and sidecar["ort_verification"]["passed"]
    assert sidecar["ort_verification"]["top1_agreement"] == 1.0
    assert "onnxruntime==" in (ship / "requirements.txt").read_text()


def test_int8_that_loses_too_much_is_recovered_by_quantization_aware_training(
        tiny_checkpoint, tmp_path, monkeypatch):
    """Post-training int8 calibrated on ranges a thousand times too narrow loses its
    accuracy; the pruned fp32 file is fine, so compress trains the int8 model
    quantization-aware and offers it as a candidate."""
    from edgeprune.export import tflite_quant

    calibrate = tflite_quant.calibrate
    monkeypatch.setattr(tflite_quant, "calibrate",
                        lambda data, recipe, samples: calibrate(data, recipe, samples * 1e-3))
    result = compress(model=str(tiny_checkpoint), out=str(tmp_path / "qat"), qat_epochs=1,
                      **FAST)
    by_name = {c["name"]: c for c in result.candidates}
    assert not by_name["pruned int8 tflite"]["within_tolerance"]
    qat = by_name["pruned int8 (QAT) tflite"]
    assert qat["quantization"] == "qat" and qat["path"].endswith("pruned.int8-qat.tflite")
    assert qat["accuracy"] > by_name["pruned int8 tflite"]["accuracy"] + 0.1
    assert qat["within_tolerance"] and qat["speedup"]["rounds"] == 4  # measured with the rest
    stages = json.loads((result.run_dir / "manifest.json").read_text())["stages"]
    assert stages["qat"]["images_per_s"] > 0


def test_a_latency_budget_no_file_meets_is_a_stated_miss_not_a_deeper_cut(run, tiny_checkpoint,
                                                                          tmp_path):
    pruned = next(c for c in run.candidates if c["name"] == "pruned int8 tflite")
    budget = round(pruned["estimate_ms"] * 0.5, 6)
    result = compress(model=str(tiny_checkpoint), out=str(tmp_path / "budget"),
                      latency_ms=budget, **FAST)
    stages = json.loads((result.run_dir / "manifest.json").read_text())["stages"]
    assert "budget" not in stages and stages["prune"]["goal"].startswith("-50% FLOPs")
    assert not any(c["meets_budget"] for c in result.candidates)
    shipped = result.shipped
    assert shipped["budget_latency_ms"] == shipped["estimate_ms"]
    assert result.latency_budget_ms == budget
    assert (f"misses it by {shipped['estimate_ms'] - budget:.3f} ms" in result.reason
            and "(roofline estimate)" in result.reason)


def test_compress_measures_the_candidates_on_the_device(sshd, tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, "compress", "--model", str(tiny_checkpoint),
                             "--dataset", "synthetic", "--epochs", "1", "--bench-runs", "3",
                             "--bench-seconds", "0", "--bench-rounds", "3", "--criterion",
                             "l1", "--score-samples", "64", "--latency-ms", "1000",
                             "--flops-reduction", "0.5", "--out", str(tmp_path / "dev"),
                             "--json", *sshd.cli_args())
    assert code == 0, err
    result = json.loads(out)
    assert all(c["latency_label"].startswith(f"{sshd.url}, 4 threads")
               for c in result["candidates"])
    assert all(c["meets_budget"] for c in result["candidates"])
    assert all(c["budget_latency_ms"] == c["latency_ms"]["p50"] for c in result["candidates"])
    assert "budget (measured on the device)" in result["reason"]
    assert sshd.leftovers() == []


def test_compress_measures_the_candidates_on_every_device_of_a_fleet(
        sshd, second_sshd, tiny_checkpoint, tmp_path, capsys):
    fleet = [sshd.url, second_sshd.url]
    code, out, err = run_cli(capsys, "compress", "--model", str(tiny_checkpoint),
                             "--dataset", "synthetic", "--epochs", "0", "--bench-runs", "3",
                             "--bench-seconds", "0", "--bench-rounds", "2", "--criterion",
                             "l1", "--score-samples", "64", "--out", str(tmp_path / "fleet"),
                             "--json", *sshd.cli_args(), "--device", second_sshd.url)
    assert code == 0, err
    result = json.loads(out)
    for c in result["candidates"]:  # the first device's figures decide; each one's is kept
        assert c["latency_label"].startswith(f"{sshd.url}, 4 threads")
        assert list(c["fleet"]) == fleet
        assert all(c["fleet"][url]["latency_ms"]["p50"] > 0 for url in fleet)
        assert c["fleet"][sshd.url]["latency_ms"] == c["latency_ms"]
    stages = json.loads((tmp_path / "fleet" / "manifest.json").read_text())["stages"]
    assert stages["bench"]["device"] == sshd.url and stages["bench"]["devices"] == fleet
    assert f"bench on {second_sshd.url}:" in err
    assert sshd.leftovers() == [] and second_sshd.leftovers() == []


def test_sweep_cells_take_the_devices_of_a_fleet_in_turn(tmp_path):
    from edgeprune.jobs.config import CompressConfig
    from edgeprune.jobs.sweep import run_sweep

    seen = []

    def fake_compress(cfg, **_):
        seen.append((cfg.criterion, cfg.flops_reduction, cfg.device))
        raise EdgepruneError("stop here")

    base = CompressConfig(device=("ssh://a", "ssh://b"))
    with pytest.raises(EdgepruneError, match="3 of 3 sweep cells failed"):
        run_sweep(base, ["l1"], [0.3, 0.5, 0.7], tmp_path / "sweep", compress_fn=fake_compress)
    assert seen == [("l1", 0.3, ("ssh://a",)), ("l1", 0.5, ("ssh://b",)),
                    ("l1", 0.7, ("ssh://a",))]


@pytest.mark.parametrize(("extra", "message"), [
    (["--precision", "int4"], "--precision 'int4'"),
    (["--max-drop", "-1"], "--max-drop -1.0 must be at least 0, at most 100"),
    (["--latency-ms", "0"], "--latency-ms 0.0 must be more than 0"),
    (["--bench-runs", "0"], "--bench-runs 0 must be at least 1"),
    (["--formats", "onnx"], "lacks tflite"),
    (["--device", "telnet://pi"], "unknown device kind 'telnet'"),
    (["--target", "nope.toml"], "does not exist"),
])
def test_bad_contract_options_fail_before_any_work(tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, "compress", "--dataset", "synthetic", "--out",
                           str(tmp_path / "run"), *extra)
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def _candidate(name: str, accuracy: float, p50: float, estimate: float = 1.0) -> Candidate:
    model, precision = name.split()
    c = Candidate(model, precision, "tflite", f"models/{model}.{precision}.tflite", 1, accuracy)
    c.latency_ms, c.estimate_ms, c.latency_label = {"p50": p50}, estimate, "host, 2 threads"
    c.speedup = {"value": 1.0, "low": 1.0, "high": 1.0, "rounds": 1}
    return c


def test_choice_is_the_fastest_within_tolerance_and_a_budget_comes_first():
    cands = [_candidate("dense fp32", 0.90, 1.0, 4.0), _candidate("dense int8", 0.90, 0.4, 2.0),
             _candidate("pruned fp32", 0.895, 0.5, 1.5), _candidate("pruned int8", 0.87, 0.2)]
    judge(cands, 0.90, 1.0, None, False)
    assert [c.within_tolerance for c in cands] == [True, True, True, False]
    assert choose(cands, 1.0, None, "").shipped.name == "dense int8 tflite"
    judge(cands, 0.90, 1.0, 1.6, False)  # only pruned fp32's estimate meets 1.6 ms
    choice = choose(cands, 1.0, 1.6, "roofline estimate")
    assert choice.shipped.name == "pruned fp32 tflite" and "meets the 1.6 ms" in choice.reason
    judge(cands, 0.90, 0.1, 1.6, False)
    assert choose(cands, 0.1, 1.6, "").shipped.name == "dense int8 tflite"  # the budget yields
    judge(cands, 0.95, 1.0, None, False)
    nothing = choose(cands, 1.0, None, "")
    assert nothing.shipped is None and "no candidate is within 1 point" in nothing.reason
    assert np.isclose(cands[0].drop_points, 5.0)


def test_deploy_copies_the_ship_folder_and_evaluates_it_on_the_device(run, sshd, tmp_path,
                                                                     capsys):
    remote = tmp_path / "on-device"
    code, out, err = run_cli(capsys, "deploy", str(run.run_dir), "--remote-dir", str(remote),
                             "--runs", "3", "--min-seconds", "0", *sshd.cli_args())
    assert code == 0, err
    assert sorted(p.name for p in remote.iterdir()) == sorted(
        p.name for p in (run.run_dir / "ship").iterdir())
    assert f"copied {len(list(remote.iterdir()))} files to {sshd.url}:{remote}" in out
    top1 = float(out.split("top-1 ")[1].split("%")[0])
    from edgeprune.devices import bench_local

    here = bench_local(run.run_dir / "ship" / Path(run.shipped["path"]).name, runs=1,
                       min_seconds=0, eval=True)
    assert top1 == pytest.approx(here.top1 * 100, abs=0.051)  # the same file, the same batch
    assert "at 4 threads" in out  # the target's threads


def test_deploy_names_what_the_device_lacks_and_installs_nothing(run, sshd, tmp_path, capsys):
    """A device whose Python has no TFLite runtime: the files are copied, the pip line is
    printed, nothing is installed, exit 2."""
    shadow = tmp_path / "shadow"
    for package in ("ai_edge_litert", "tflite_runtime"):
        (shadow / package).mkdir(parents=True)
        (shadow / package / "__init__.py").write_text("raise ImportError('hidden')\n")
    python = tmp_path / "python-without-runtime"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    args = [a if a != sys.executable else str(python) for a in sshd.cli_args()]
    code, _, err = run_cli(capsys, "deploy", str(run.run_dir), "--remote-dir",
                           str(tmp_path / "remote"), *args)
    assert_one_line_error(code, err, "lacks ai-edge-litert==")
    assert "pip install -r" in err and "nothing was installed" in err
    assert (tmp_path / "remote" / "requirements.txt").is_file()


def test_deploy_refuses_a_folder_without_a_shipped_file(sshd, tmp_path, capsys):
    code, _, err = run_cli(capsys, "deploy", str(tmp_path), *sshd.cli_args())
    assert_one_line_error(code, err, "has no ship/ folder")
