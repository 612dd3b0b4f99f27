"""Target profiles, the standalone runner (run as a device would: a child process) and the
local backend, on tiny ONNX and TFLite models made here."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import stat
import subprocess
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from helpers import FINISHED_RUN
from typer.testing import CliRunner

from edgeprune.cli.devices import bench
from edgeprune.devices import (
    BACKENDS,
    BenchOptions,
    BenchResult,
    TargetProfile,
    bench_local,
    count_model,
    default_samples_path,
    estimate_latency,
    get_backend,
    list_targets,
    load_target,
    read_eval_samples,
    write_eval_samples,
)
from edgeprune.devices.bench import RUNNER
from edgeprune.devices.estimate import ModelCost
from edgeprune.devices.runner import RunnerError, to_model_layout
from edgeprune.devices.targets import ARCHES, FORMATS, PRECISIONS, RUNTIMES
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.bench import append_to_run, bench_models

FAST = ["--warmup", "2", "--runs", "30", "--min-seconds", "0.3"]
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p99", "max", "std")
RUNTIME_OF = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}
FORMAT_OF_RUNTIME = {"tflite": "tflite", "onnxruntime": "onnx"}
XNNPACK_NR = {"aarch64": 8, "armv7l": 8, "x86_64": 16}


def run_runner(*args: str, python_flags: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, str(RUNNER), *args],
                          capture_output=True, text=True, timeout=120, env=env)


TINY_MACS = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 9 + 8 * 16 * 16 * 4  # conv, depthwise, linear


def tiny_classifier() -> torch.nn.Module:
    """conv 3->8, depthwise 3x3, linear to 4 classes, on 3x16x16 inputs."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 4)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier as .onnx (torch.onnx dynamo export) and .tflite (litert-torch), with
    eval samples labelled by the PyTorch model itself (so an exact export scores 100%)."""
    import litert_torch

    folder = tmp_path_factory.mktemp("models")
    model = tiny_classifier()
    x = torch.randn(1, 3, 16, 16)
    paths = {"onnx": folder / "tiny.onnx", "tflite": folder / "tiny.tflite"}
    torch.onnx.export(model, (x,), str(paths["onnx"]), dynamo=True, external_data=False)
    litert_torch.convert(model, (x,)).export(str(paths["tflite"]))
    samples = torch.randn(12, 3, 16, 16)
    with torch.no_grad():
        labels = model(samples).argmax(1)
    write_eval_samples(default_samples_path(paths["onnx"]), samples, labels)
    return paths


@pytest.fixture(scope="module")
def reports(models: dict[str, Path]) -> dict[str, tuple[dict, str]]:
    """One runner run per format with -X importtime: (JSON report, stderr)."""
    out = {}
    for fmt, path in models.items():
        proc = run_runner(str(path), *FAST, python_flags=("-X", "importtime"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[fmt] = json.loads(proc.stdout)["results"][0], proc.stderr
    return out


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_runner_report_has_sane_fields(fmt: str, models: dict[str, Path],
                                       reports: dict[str, tuple[dict, str]]) -> None:
    report, _ = reports[fmt]
    assert report["model"] == str(models[fmt])
    assert report["file_size_bytes"] == os.path.getsize(models[fmt])
    assert report["format"] == fmt and report["runtime"] == RUNTIME_OF[fmt]
    assert re.match(r"\d+\.\d+", report["runtime_version"])
    assert (report["threads"], report["warmup"]) == (1, 2)
    assert report["runs"] >= 30 and report["timed_seconds"] >= 0.3
    assert report["inputs"] == [{"name": report["inputs"][0]["name"], "shape": [1, 3, 16, 16],
                                 "dtype": "float32"}]
    lat = report["latency_ms"]
    assert set(lat) == set(LATENCY_KEYS)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert report["load_ms"] > 0 and report["first_inference_ms"] > 0
    assert 10 < report["peak_rss_mb"] < 4096
    host = report["host"]
    assert host["machine"] == platform.machine() and host["cores"] == os.cpu_count()
    assert {"cpu_model", "governor", "temperature_c"} <= set(host)
    assert report["python"] == platform.python_version()


def test_runner_imports_neither_torch_nor_edgeprune(reports: dict[str, tuple[dict, str]]) -> None:
    for fmt, (_, stderr) in reports.items():
        imported = {line.split("|")[-1].strip().split(".")[0]
                    for line in stderr.splitlines() if line.startswith("import time:")}
        assert {"numpy", "json"} <= imported, fmt  # the -X importtime listing was parsed
        assert not imported & {"torch", "edgeprune"}, fmt


@pytest.mark.parametrize(("runs", "min_seconds"), [(1, 0.5), (7, 0.0)])
def test_runner_times_at_least_runs_and_min_seconds(models: dict[str, Path], runs: int,
                                                    min_seconds: float) -> None:
    proc = run_runner(str(models["tflite"]), "--warmup", "0", "--runs", str(runs),
                      "--min-seconds", str(min_seconds), "--rounds", "1")
    report = json.loads(proc.stdout)["results"][0]
    assert report["timed_seconds"] >= min_seconds
    if min_seconds == 0.0:
        assert report["runs"] == runs
    else:
        assert report["runs"] > runs  # a sub-millisecond model runs many times in 0.5 s


def _assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines()
             if not ln.startswith("INFO: ")]  # TFLite's own C++ log line, not ours
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing.tflite", None, "model file not found"),
    ("model.pt", b"x", "expected .tflite, .onnx or .ort"),
    ("corrupt.onnx", b"not a protobuf", "cannot load corrupt.onnx"),
    ("corrupt.tflite", b"not a flatbuffer", "cannot load corrupt.tflite"),
])
def test_runner_errors_are_one_line_exit_2(tmp_path: Path, name: str, content: bytes | None,
                                           expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    _assert_one_line_error(run_runner(str(path)), expected)


@pytest.mark.parametrize(("fmt", "pip_line"), [("tflite", "pip install ai-edge-litert"),
                                               ("onnx", "pip install onnxruntime")])
def test_runner_without_runtime_names_pip_install(tmp_path: Path, models: dict[str, Path],
                                                  fmt: str, pip_line: str) -> None:
    for package in ("ai_edge_litert", "tflite_runtime", "onnxruntime"):  # shadow them all
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    _assert_one_line_error(run_runner(str(models[fmt]), env=env), pip_line)


def test_bench_local_returns_labelled_result(models: dict[str, Path]) -> None:
    result = bench_local(models["onnx"], threads=1, warmup=1, runs=5, min_seconds=0.1)
    assert isinstance(result, BenchResult) and result.label == "host"
    assert result.runtime == "onnxruntime" and result.runs >= 5
    assert result.p50_ms == result.latency_ms["p50"] <= result.p90_ms == result.latency_ms["p90"]
    assert result.file_size_bytes == os.path.getsize(models["onnx"])
    assert result.raw["latency_ms"] == result.latency_ms
    assert "raw" not in json.loads(json.dumps(result.to_dict()))


def test_bench_local_turns_runner_failures_into_edgeprune_errors(tmp_path: Path,
                                                                 models: dict[str, Path]) -> None:
    with pytest.raises(EdgepruneError, match=r"nope\.onnx failed: model file not found"):
        bench_local(tmp_path / "nope.onnx")
    with pytest.raises(EdgepruneError, match="did not finish in 1 s"):
        bench_local(models["tflite"], min_seconds=60, timeout_s=1)


DEVICE_EXAMPLES = {"local": "local", "ssh": "ssh://pi@raspberrypi.local:22"}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_registry(name: str) -> None:
    backend = get_backend(DEVICE_EXAMPLES[name])
    assert backend.label in ("host", "device") and callable(backend.bench)
    assert backend.device == DEVICE_EXAMPLES[name]


def test_unknown_names_suggest_a_close_match() -> None:
    with pytest.raises(EdgepruneError, match=r"unknown target 'rpi-4'; did you mean 'rpi4'\?"):
        load_target("rpi-4")
    with pytest.raises(EdgepruneError, match=r"did you mean 'local'\?"):
        get_backend("locl")
    with pytest.raises(EdgepruneError, match=r"unknown device kind 'adb'"):
        get_backend("adb://phone")
    with pytest.raises(EdgepruneError, match=r"--device 'pi@raspberrypi.local' has no scheme; "
                       r"write it as ssh://pi@raspberrypi.local"):
        get_backend("pi@raspberrypi.local")


def test_required_targets_exist() -> None:
    names = {p.name for p in list_targets()}
    assert {"rpi3", "rpi4", "rpi5", "jetson-nano", "x86-64"} <= names


def test_target_file_keys_are_checked() -> None:
    data = asdict(load_target("rpi4")) | {"simd_widht": 8}
    with pytest.raises(EdgepruneError, match=r"unknown keys \['simd_widht'\]"):
        TargetProfile.from_dict(data, "bad.json")


@pytest.mark.parametrize("p", list_targets(), ids=lambda p: p.name)
def test_target_profile_is_valid(p: TargetProfile) -> None:
    assert resources.files("edgeprune.devices").joinpath("targets", f"{p.name}.json").is_file()
    assert load_target(p.name) is p and p.description
    cpu = re.fullmatch(r"(\d+)x (.+) @ ([\d.]+) GHz", p.cpu)
    assert cpu and int(cpu[1]) == p.cores >= 1
    assert p.arch in ARCHES and p.simd_width == XNNPACK_NR[p.arch]
    assert p.runtime in RUNTIMES and 1 <= p.threads <= p.cores and p.ram_mb >= 256
    assert p.formats and set(p.formats) <= set(FORMATS) and len(set(p.formats)) == len(p.formats)
    assert p.formats[0] == FORMAT_OF_RUNTIME[p.runtime]
    flops_per_cycle = p.peak_gflops / (float(cpu[3]) * p.cores)
    assert flops_per_cycle == pytest.approx(round(flops_per_cycle)) and \
        round(flops_per_cycle) in (4, 8, 16, 32, 64)
    assert 0 < p.mem_bandwidth_gbs < 1000
    assert p.clock_ghz == float(cpu[3])
    assert sorted(p.efficiency) == sorted(PRECISIONS)
    assert all(0.05 < e < 1 for e in p.efficiency.values())
    for c in p.calibration:  # the efficiency reproduces each published figure it came from
        assert c.implied_efficiency(p) == pytest.approx(p.efficiency[c.precision], rel=0.01)
        assert c.source and c.threads <= p.cores
    for field in ("simd_width", "peak_gflops", "mem_bandwidth_gbs", "efficiency"):
        assert f"{field}:" in p.notes


# ------------------------------------------------------------------ --eval and sample batches

def test_write_eval_samples_round_trips_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.samples.npz"
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    assert write_eval_samples(path, x, [0, 1, 2]) == path
    assert [p.name for p in path.parent.iterdir()] == ["m.samples.npz"]  # no temp file left
    rx, ry = read_eval_samples(path)
    assert rx.dtype == np.float32 and ry.dtype == np.int64 and ry.tolist() == [0, 1, 2]
    np.testing.assert_allclose(rx, x.numpy(), rtol=1e-6)
    with pytest.raises(EdgepruneError, match=r"need x \(N, C, H, W\) and y \(N,\)"):
        write_eval_samples(path, np.zeros((3, 4, 4)), [0, 1, 2])
    assert default_samples_path(Path("r/dense.onnx")) == Path("r/dense.samples.npz")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_eval_samples_get_the_permissions_of_any_output(tmp_path: Path, umask: int) -> None:
    """Readable by the group like every other output, not mkstemp's private 0600."""
    old = os.umask(umask)
    try:
        path = write_eval_samples(tmp_path / "m.samples.npz", np.zeros((2, 1, 4, 4)), [0, 1])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_runner_eval_scores_the_shipped_samples(models: dict[str, Path], fmt: str) -> None:
    """Both formats read tiny.samples.npz (same stem); labels from PyTorch: 100% top-1."""
    result = bench_local(models[fmt], warmup=0, runs=2, min_seconds=0, eval=True)
    assert result.eval["samples"] == 12 and result.eval["layout"] == "NCHW"
    assert result.top1 == 1.0 and result.eval["correct"] == 12
    assert result.eval["samples_file"] == str(default_samples_path(models[fmt]))


def test_runner_eval_counts_wrong_labels(models: dict[str, Path], tmp_path: Path) -> None:
    x, y = read_eval_samples(default_samples_path(models["onnx"]))
    y[::2] = (y[::2] + 1) % 4  # half of the labels wrong
    other = write_eval_samples(tmp_path / "half.npz", x, y)
    result = bench_local(models["onnx"], warmup=0, runs=1, min_seconds=0, eval=True,
                         samples=other)
    assert result.top1 == 0.5 and result.eval["samples_file"] == str(other)
    assert bench_local(models["onnx"], warmup=0, runs=1, min_seconds=0).eval is None


def test_runner_eval_errors_are_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_runner(str(models["onnx"]), "--eval", "--samples", str(tmp_path / "no.npz"))
    _assert_one_line_error(proc, "eval samples not found")
    wrong = write_eval_samples(tmp_path / "wrong.npz", np.zeros((2, 3, 8, 8)), [0, 1])
    proc = run_runner(str(models["tflite"]), "--eval", "--samples", str(wrong))
    _assert_one_line_error(proc, "do not fit the model input [1, 3, 16, 16]")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    proc = run_runner(str(models["tflite"]), "--eval", "--samples", str(tmp_path / "junk.npz"))
    _assert_one_line_error(proc, "cannot read eval samples junk.npz")


def test_eval_samples_are_transposed_for_nhwc_models() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    same, layout = to_model_layout(x, [1, 3, 4, 5])
    assert layout == "NCHW" and same is x
    nhwc, layout = to_model_layout(x, [1, 4, 5, 3])
    assert layout == "NHWC" and nhwc.shape == (2, 4, 5, 3) and nhwc[1, 2, 3, 0] == x[1, 0, 2, 3]
    square = np.zeros((1, 3, 3, 3), dtype=np.float32)  # fits both: the sidecar's layout decides
    assert to_model_layout(square, [1, 3, 3, 3], "NHWC")[1] == "NHWC"
    with pytest.raises(RunnerError, match="do not fit"):
        to_model_layout(x, [1, 3, 5, 4])


def test_runner_eval_on_a_real_nhwc_tflite(tmp_path: Path) -> None:
    import litert_torch

    model = tiny_classifier()
    nhwc = litert_torch.to_channel_last_io(model, args=[0])
    path = tmp_path / "nhwc.tflite"
    litert_torch.convert(nhwc, (torch.randn(1, 16, 16, 3),)).export(str(path))
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        write_eval_samples(default_samples_path(path), x, model(x).argmax(1))
    result = bench_local(path, warmup=0, runs=1, min_seconds=0, eval=True)
    assert result.inputs[0]["shape"] == [1, 16, 16, 3]
    assert result.eval["layout"] == "NHWC" and result.top1 == 1.0


# ------------------------------------------------------------------------------ estimates

@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_count_model_matches_the_analytic_macs(models: dict[str, Path], fmt: str) -> None:
    cost = count_model(models[fmt])
    assert cost.macs == TINY_MACS and cost.precision == "fp32" and cost.uncounted_ops == 0
    params = 8 * 27 + 8 + 8 * 9 + 8 + 2048 * 4 + 4
    assert params * 4 <= cost.weight_bytes < params * 4 + 200  # + a few shape constants
    assert cost.activation_bytes >= 4 * (3 + 8 + 8) * 256  # input, two conv outputs
    assert cost.bytes_moved == cost.weight_bytes + 2 * cost.activation_bytes


def test_count_model_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError, match="expected a .onnx or .tflite"):
        count_model(tmp_path / "m.pt")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(EdgepruneError, match="cannot count the operations of bad.onnx"):
        count_model(tmp_path / "bad.onnx")


@pytest.fixture(scope="module")
def mobilenet_v2_cost(tmp_path_factory: pytest.TempPathFactory) -> ModelCost:
    """torchvision MobileNetV2 (1.0, 224x224) exported with the fast TorchScript exporter."""
    import torchvision

    path = tmp_path_factory.mktemp("mnv2") / "mobilenet_v2.onnx"
    model = torchvision.models.mobilenet_v2().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False)
    return count_model(path)


def test_mobilenet_v2_estimate_on_rpi4_matches_published_figures(
        mobilenet_v2_cost: ModelCost) -> None:
    cost = mobilenet_v2_cost
    assert cost.macs == pytest.approx(300.8e6, rel=0.01)  # the paper's ~300M MACs
    rpi4 = load_target("rpi4")
    estimate = estimate_latency(cost, rpi4)
    assert estimate.label == "estimate" and estimate.threads == 4 and estimate.bound == "compute"
    assert estimate.latency_ms == pytest.approx(41, rel=0.15)  # issue #5's figure
    at_1_5_ghz = dataclasses.replace(rpi4, peak_gflops=48.0)  # the XNNPACK README's board
    assert estimate_latency(cost, at_1_5_ghz).latency_ms == pytest.approx(44, rel=0.05)
    int8 = estimate_latency(dataclasses.replace(cost, precision="int8"), rpi4)
    assert 17 * 0.85 <= int8.latency_ms <= 20 * 1.15
    one_thread = estimate_latency(cost, rpi4, threads=1)
    assert one_thread.latency_ms == pytest.approx(4 * estimate.latency_ms)


def test_memory_bound_estimate_uses_the_bandwidth() -> None:
    cost = ModelCost(macs=1000, weight_bytes=12_800_000, activation_bytes=0, precision="fp32",
                     ops=1)
    estimate = estimate_latency(cost, load_target("rpi4"))
    assert estimate.bound == "memory" and estimate.latency_ms == pytest.approx(1.0)


# ------------------------------------------------------------------ bench_models, the CLI

def test_bench_models_compares_files_and_estimates_on_host(models: dict[str, Path]) -> None:
    options = BenchOptions(threads=1, warmup=0, runs=3, min_seconds=0)
    rows = bench_models([models["onnx"], models["tflite"]], "rpi4", None, options)
    assert [r.path for r in rows] == [models["onnx"], models["tflite"]]
    assert all(r.label == "host" and r.result.threads == 1 for r in rows)
    assert rows[0].p50_ratio == 1.0 and rows[0].size_ratio == 1.0
    per_round = sorted(a / b for a, b in zip(rows[1].result.rounds_p50_ms,
                                            rows[0].result.rounds_p50_ms, strict=True))
    assert rows[1].p50_ratio == pytest.approx(np.median(per_round))
    assert rows[1].p50_spread == pytest.approx((per_round[0], per_round[-1]))
    assert rows[1].size_ratio == pytest.approx(rows[1].result.file_size_bytes /
                                               rows[0].result.file_size_bytes)
    for r in rows:  # the estimate sits beside the measurement, never inside it
        assert r.estimate.label == "estimate" and r.estimate.target == "rpi4"
        assert r.cost.macs == TINY_MACS
        d = r.to_dict()
        assert d["label"] == "host" and d["estimate"]["label"] == "estimate"
        assert "estimate" not in json.dumps(d["measurement"])


def test_bench_models_checks_every_file_first(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError, match="model file not found: .*missing.onnx"):
        bench_models([models["onnx"], tmp_path / "missing.onnx"])
    with pytest.raises(EdgepruneError, match="at least one"):
        bench_models([])
    with pytest.raises(EdgepruneError, match="is a folder; give its .onnx or .tflite files"):
        bench_models([tmp_path])


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(bench)
    app.callback()(lambda: None)  # keep `bench` a subcommand, as in edgeprune's app
    return app


def test_cli_bench_table_json_and_run_manifest(models: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({**FINISHED_RUN, "stages": {}}))
    out = tmp_path / "bench.json"
    args = ["bench", str(models["onnx"]), str(models["tflite"]), "--target", "x86-64",
            "--threads", "1", "--runs", "3", "--min-seconds", "0", "--warmup", "0", "--eval",
            "--json", str(out), "--run", str(run_dir), "-q"]
    result = CliRunner().invoke(_cli(), args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "tiny.onnx" in result.output and "tiny.tflite" in result.output
    assert "x86-64 est." in result.output and "not a measurement" in result.output
    assert "100.0%" in result.output
    record = json.loads(out.read_text())
    assert record["target"] == "x86-64" and record["device"] == "local"
    assert record["options"] | {"threads": 1, "warmup": 0, "runs": 3, "eval": True} == \
        record["options"]
    assert [r["label"] for r in record["rows"]] == ["host", "host"]
    assert record["rows"][1]["measurement"]["eval"]["top1"] == 1.0
    CliRunner().invoke(_cli(), args, env={"COLUMNS": "160"})  # a second call appends
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["bench"]) == 2 and manifest["stages"] == {}
    assert manifest["bench"][0]["rows"][0]["model"] == str(models["onnx"])


def test_cli_bench_failure_leaves_results_untouched(models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text("earlier results")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(_cli(), ["bench", str(models["onnx"]), str(bad), "--runs", "1",
                                         "--min-seconds", "0", "--json", str(out), "-q"])
    assert isinstance(result.exception, EdgepruneError)
    assert "bad.onnx failed: cannot load bad.onnx" in str(result.exception)  # names the file
    assert out.read_text() == "earlier results"
    result = CliRunner().invoke(_cli(), ["bench", str(models["onnx"]), "--run", str(tmp_path)])
    assert isinstance(result.exception, EdgepruneError)
    assert "holds no manifest.json" in str(result.exception)


def test_append_to_run_keeps_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({**FINISHED_RUN, "config": {"a": 1},
                                    "bench": [{"old": True}]}))
    append_to_run(tmp_path, {"new": True})
    assert json.loads(manifest.read_text()) == {**FINISHED_RUN, "config": {"a": 1},
                                                "bench": [{"old": True}, {"new": True}]}


# ------------------------------------------------------------------ interleaved measurement

def test_runner_times_files_in_rotating_rounds() -> None:
    """Every round times every file in turn, starting one file later each round, so a burst
    of load from other work hits each file alike."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("runner_module", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    calls: list[str] = []
    sessions = [SimpleNamespace(invoke=lambda n=n: calls.append(n)) for n in "abc"]
    out = runner.interleaved(sessions, rounds=3, runs=6, min_seconds=0)
    assert calls == list("aabbcc" "bbccaa" "ccaabb")  # 2 runs per file per round
    assert [len(latencies) for latencies, _, _ in out] == [6, 6, 6]
    assert [len(medians) for _, medians, _ in out] == [3, 3, 3]


def test_ratios_come_from_rounds_and_hold_under_load() -> None:
    """Two files slowed alike by load in some rounds keep their ratio; the spread is over
    the rounds."""
    from edgeprune.devices.results import Ratio

    load = [1.0, 3.0, 1.0, 2.5, 1.0]
    fast = BenchResult.from_runner_json(
        {"model": "f", "file_size_bytes": 1, "format": "tflite", "runtime": "x",
         "runtime_version": "1", "threads": 1, "warmup": 0, "runs": 5, "min_seconds": 0,
         "seed": 0, "timed_seconds": 1, "inputs": [], "load_ms": 1,
         "first_inference_ms": 1, "latency_ms": {"p50": 0.3}, "peak_rss_mb": None,
         "host": {}, "python": "3", "rounds_p50_ms": [0.1 * f for f in load]}, "host")
    slow = dataclasses.replace(fast, rounds_p50_ms=[0.4 * f for f in load],
                               latency_ms={"p50": 1.0})
    ratio = Ratio.of(slow, fast)
    assert ratio.value == pytest.approx(4.0) and ratio.rounds == 5
    assert (ratio.low, ratio.high) == (pytest.approx(4.0), pytest.approx(4.0))
    assert str(ratio) == "4.00x (4.00-4.00)"  # while slow/fast p50 over all runs says 3.3x


def test_runner_measures_several_files_in_one_report(models: dict[str, Path]) -> None:
    from edgeprune.export.ort import convert_to_ort

    ort = models["onnx"].with_name("tiny_copy.ort")
    ort.write_bytes(convert_to_ort(models["onnx"]))
    proc = run_runner(str(models["onnx"]), str(models["tflite"]), str(ort), "--rounds", "4",
                      "--runs", "8", "--min-seconds", "0", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "edgeprune.runner/2" and report["interleaved"] is True
    formats = [r["format"] for r in report["results"]]
    assert formats == ["onnx", "tflite", "ort"]
    for r in report["results"]:
        assert len(r["rounds_p50_ms"]) == 4 and r["runs"] >= 8
    assert report["results"][2]["runtime"] == "onnxruntime"


def test_every_precision_of_a_model_shares_its_sample_batch() -> None:
    for name in ("pruned.tflite", "pruned.int8.tflite", "pruned.fp16.onnx",
                 "pruned.int8-qat.tflite", "pruned.ort"):
        assert default_samples_path(Path("run/models") / name) == Path(
            "run/models/pruned.samples.npz")


# ------------------------------------------------------------------ a user's own board

def _profile_toml(path: Path, **changes) -> Path:
    from edgeprune.tomlfile import dumps

    data = {k: v for k, v in asdict(load_target("rpi4")).items() if k != "source"}
    data.update(name="myboard", calibration=[], **changes)
    data = {k: v for k, v in data.items() if v is not None}
    path.write_text(dumps(data))
    return path


def test_a_profile_file_is_a_target(tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    path = _profile_toml(tmp_path / "boards" / "myboard.toml", cores=2, threads=2)
    profile = load_target(str(path))
    assert profile.name == "myboard" and profile.cores == 2 and profile.source == str(path)
    assert profile.precisions == ("int8", "fp32") and profile.ship_format == "tflite"
    as_json = tmp_path / "myboard.json"
    as_json.write_text(json.dumps({k: v for k, v in asdict(profile).items() if k != "source"}))
    assert load_target(str(as_json)).cores == 2


@pytest.mark.parametrize(("changes", "message"), [
    ({"cores": 0}, "cores must be a positive integer"),
    ({"runtime": "tensorrt"}, "runtime must be one of tflite, onnxruntime"),
    ({"efficiency": {"fp32": 2.0, "int8": 0.5}}, "shares of the peak in (0, 1]"),
    ({"precisions": ["int4"]}, "precisions must be a list of int8, fp16, fp32"),
    ({"peak_gflops": "fast"}, "peak_gflops must be a positive number"),
    ({"cpu": "4x Cortex-A72"}, "@ <clock> GHz"),
    ({"simd_widht": 8}, "unknown keys ['simd_widht']"),
])
def test_profile_file_mistakes_are_one_line_naming_the_key(tmp_path: Path, changes: dict,
                                                           message: str) -> None:
    path = _profile_toml(tmp_path / "bad.toml", **changes)
    with pytest.raises(EdgepruneError, match=re.escape(message)):
        load_target(str(path))


def test_missing_profile_file_says_what_a_target_is(tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError, match="does not exist; pass a shipped name"):
        load_target(str(tmp_path / "nope.toml"))
    (tmp_path / "broken.toml").write_text("name = [")
    with pytest.raises(EdgepruneError, match="is not valid TOML"):
        load_target(str(tmp_path / "broken.toml"))
