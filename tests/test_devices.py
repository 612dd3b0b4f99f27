"""Target profiles, the standalone runner (run as a device would: a child process) and the
local backend, on tiny ONNX and TFLite models made here."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import pytest
from edgeprune.devices import (
    BACKENDS,
    BenchResult,
    TargetProfile,
    bench_local,
    get_backend,
    list_targets,
    load_target,
)
from edgeprune.devices.bench import RUNNER
from edgeprune.devices.targets import ARCHES, FORMATS, RUNTIMES

from edgeprune.errors import EdgepruneError

FAST = ["--warmup", "2", "--runs", "30", "--min-seconds", "0.3"]
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p99", "max", "std")
RUNTIME_OF = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}
FORMAT_OF_RUNTIME = {"tflite": "tflite", "onnxruntime": "onnx"}
XNNPACK_NR = {"aarch64": 8, "armv7l": 8, "x86_64": 16}


def run_runner(*args: str, python_flags: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, str(RUNNER), *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-conv model as .onnx (torch.onnx dynamo export) and .tflite (litert-torch)."""
    import litert_torch
    import torch

    folder = tmp_path_factory.mktemp("models")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    paths = {"onnx": folder / "tiny.onnx", "tflite": folder / "tiny.tflite"}
    torch.onnx.export(model, (x,), str(paths["onnx"]), dynamo=True, external_data=False)
    litert_torch.convert(model, (x,)).export(str(paths["tflite"]))
    return paths


@pytest.fixture(scope="module")
def reports(models: dict[str, Path]) -> dict[str, tuple[dict, str]]:
    """One runner run per format with -X importtime: (JSON report, stderr)."""
    out = {}
    for fmt, path in models.items():
        proc = run_runner(str(path), *FAST, python_flags=("-X", "importtime"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[fmt] = json.loads(proc.stdout), proc.stderr
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
                      "--min-seconds", str(min_seconds))
    report = json.loads(proc.stdout)
    assert report["timed_seconds"] >= min_seconds
    if min_seconds == 0.0:
        assert report["runs"] == runs
    else:
        assert report["runs"] > runs  # a sub-millisecond model runs many times in 0.5 s


def _assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing.tflite", None, "model file not found"),
    ("model.pt", b"x", "expected .tflite or .onnx"),
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


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_registry(name: str) -> None:
    backend = get_backend(name)
    assert backend.label in ("host", "device", "estimate") and callable(backend.bench)


def test_unknown_names_suggest_a_close_match() -> None:
    with pytest.raises(EdgepruneError, match=r"unknown target 'rpi-4'; did you mean 'rpi4'\?"):
        load_target("rpi-4")
    with pytest.raises(EdgepruneError, match=r"did you mean 'local'\?"):
        get_backend("locl")


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
    for field in ("simd_width", "peak_gflops", "mem_bandwidth_gbs"):
        assert f"{field}:" in p.notes
