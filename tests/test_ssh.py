"""The ssh backend against a real OpenSSH server started here on 127.0.0.1 (see sshd.py and
the `sshd` fixture in conftest.py)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from helpers import FINISHED_RUN
from sshd import FAST, Sshd, free_port, needs_sshd
from typer.testing import CliRunner

from edgeprune.cli.devices import bench
from edgeprune.devices import BenchOptions, default_samples_path, write_eval_samples
from edgeprune.devices.runner import sidecar_path
from edgeprune.devices.ssh import DeviceFacts, SshBackend, SshOptions, parse_ssh_url
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.bench import bench_models


@pytest.fixture(autouse=True)
def _no_env_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEPRUNE_SSH_OPTIONS", raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier as .onnx and .tflite, a sidecar and eval samples labelled by it."""
    import litert_torch

    folder = tmp_path_factory.mktemp("ssh-models")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    paths = {"onnx": folder / "m.onnx", "tflite": folder / "m.tflite"}
    torch.onnx.export(model, (x,), str(paths["onnx"]), dynamo=True, external_data=False)
    litert_torch.convert(model, (x,)).export(str(paths["tflite"]))
    for path in paths.values():
        sidecar_path(path).write_text(json.dumps({"precision": "fp32", "input_spec": {
            "channels": 3, "height": 8, "width": 8, "layout": "NCHW"}}))
    samples = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        write_eval_samples(default_samples_path(paths["onnx"]), samples, model(samples).argmax(1))
    return paths


def _python_wrapper(folder: Path, name: str, body: str) -> str:
    """A shell script standing in for the device's python3."""
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


# --------------------------------------------------------------------------- without sshd

def test_parse_ssh_url() -> None:
    d = parse_ssh_url("ssh://pi@raspberrypi.local:2222")
    assert (d.user, d.host, d.port, d.destination) == ("pi", "raspberrypi.local", 2222,
                                                       "pi@raspberrypi.local")
    assert parse_ssh_url("ssh://gateway").url == "ssh://gateway"
    assert parse_ssh_url("ssh://root@[::1]:22").scp_target("/tmp/x") == "root@[::1]:/tmp/x/"
    for bad in ("pi@host", "ssh://", "ssh://pi@host/path", "ssh://pi:pw@host",
                "ssh://-oProxyCommand=x", "ssh://host:notaport"):
        with pytest.raises(EdgepruneError, match="bad device"):
            parse_ssh_url(bad)


def test_ssh_command_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPRUNE_SSH_OPTIONS", "IdentityFile=/env/key ConnectTimeout=3")
    backend = SshBackend(parse_ssh_url("ssh://pi@host:2222"),
                         SshOptions(options=("IdentityFile=/cli/key",)))
    cmd = backend.ssh_command("true")
    opts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-o"]
    # ssh keeps the first value per key: BatchMode is fixed, the CLI beats the environment,
    # both beat our defaults
    assert opts[:4] == ["BatchMode=yes", "IdentityFile=/cli/key", "IdentityFile=/env/key",
                        "ConnectTimeout=3"]
    assert "ConnectTimeout=10" in opts and "Port=2222" in opts
    assert cmd[-3:] == ["--", "pi@host", "sh -c true"]
    with pytest.raises(EdgepruneError, match="is not KEY=VALUE"):
        SshBackend(parse_ssh_url("ssh://h"), SshOptions(options=("-i key",)))


def test_old_remote_python_is_refused() -> None:
    backend = SshBackend(parse_ssh_url("ssh://pi@host"))
    def facts(python: str, modules: dict) -> DeviceFacts:
        return DeviceFacts("aarch64", 4, "Cortex-A72", 1800.0, 4096, python, modules)

    report = facts("3.6.9", {"numpy": "1.19", "onnxruntime": "1.10"})
    with pytest.raises(EdgepruneError, match=r"python3 3\.6\.9\): the runner needs Python 3\.8"):
        backend.check_versions(report, ("onnxruntime",), "pip install onnxruntime")
    report = facts("3.11.2", {"numpy": None, "onnxruntime": "1.20"})
    with pytest.raises(EdgepruneError, match="numpy is missing .*: pip install numpy"):
        backend.check_versions(report, ("onnxruntime",), "pip install onnxruntime")


# ------------------------------------------------------------------------------ with sshd

@needs_sshd
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_ssh_bench_runs_on_the_device_and_cleans_up(sshd: Sshd, models: dict[str, Path],
                                                    fmt: str) -> None:
    options = BenchOptions(threads=1, warmup=0, runs=3, min_seconds=0, eval=True,
                           samples=default_samples_path(models["onnx"]))
    result, = sshd.backend().bench([models[fmt]], options)
    assert result.label == "device" and result.device == sshd.url
    assert result.model == str(models[fmt]) and result.raw["model"] == models[fmt].name
    assert result.runtime == {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}[fmt]
    assert result.runs >= 3 and result.p50_ms > 0 and result.precision == "fp32"  # sidecar read
    assert result.eval["samples"] == 5 and result.top1 == 1.0
    assert sshd.leftovers() == []


@needs_sshd
def test_bench_models_over_ssh_has_no_estimate(sshd: Sshd, models: dict[str, Path]) -> None:
    rows = bench_models([models["onnx"], models["tflite"]], "rpi4", sshd.url, FAST,
                        sshd.options())
    assert [r.label for r in rows] == ["device", "device"]
    assert all(r.estimate is None and r.result.threads == 1 for r in rows)
    assert sshd.leftovers() == []


@needs_sshd
def test_cli_bench_over_ssh_with_env_options(sshd: Sshd, models: dict[str, Path],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPRUNE_SSH_OPTIONS", " ".join(sshd.options().options))
    app = typer.Typer()
    app.command()(bench)
    app.callback()(lambda: None)
    out = tmp_path / "device.json"
    result = CliRunner().invoke(app, [
        "bench", str(models["tflite"]), "--device", sshd.url, "--remote-python", sys.executable,
        "--runs", "2", "--min-seconds", "0", "--warmup", "0", "--json", str(out), "-q"],
        env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert f"measured on {sshd.url} (device)" in result.output and "est." not in result.output
    record = json.loads(out.read_text())
    assert record["device"] == sshd.url and record["rows"][0]["label"] == "device"
    assert record["rows"][0]["estimate"] is None and record["options"]["threads"] == 4  # rpi4


@needs_sshd
def test_host_down(sshd: Sshd, models: dict[str, Path]) -> None:
    backend = SshBackend(parse_ssh_url(f"ssh://{sshd.user}@127.0.0.1:{free_port()}"),
                         sshd.options())
    with pytest.raises(EdgepruneError, match=r"cannot reach ssh://.*Connection refused"):
        backend.bench([models["onnx"]], FAST)


@needs_sshd
def test_auth_refused(sshd: Sshd, models: dict[str, Path]) -> None:
    with pytest.raises(EdgepruneError, match=r"refused the login \(.*Permission denied.*\): "
                                             "install your key with ssh-copy-id"):
        sshd.backend(key=sshd.other_key).bench([models["onnx"]], FAST)


@needs_sshd
@pytest.mark.parametrize(("fmt", "pip_line", "runtime"), [
    ("tflite", "pip install ai-edge-litert", "ai-edge-litert"),
    ("onnx", "pip install onnxruntime", "onnxruntime")])
def test_runtime_missing_names_the_pip_line(sshd: Sshd, models: dict[str, Path],
                                            tmp_path: Path, fmt: str, pip_line: str,
                                            runtime: str) -> None:
    fake = tmp_path / "fake-packages"
    for package in ("ai_edge_litert", "tflite_runtime", "onnxruntime"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("raise ImportError('not installed')\n")
    python = _python_wrapper(tmp_path, "python3", f'PYTHONPATH={fake} exec {sys.executable} "$@"')
    with pytest.raises(EdgepruneError) as err:
        sshd.backend(python=python).bench([models[fmt]], FAST)
    message = str(err.value)
    assert message == (f"no {runtime} runtime on {sshd.url} ({python} "
                       f"{'.'.join(map(str, sys.version_info[:3]))}): {pip_line}")
    assert sshd.leftovers() == []


@needs_sshd
def test_python_missing(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError, match=r"nope/python3 not found on ssh://.*: install "
                                             r"Python 3\.8\+ there, or pass --remote-python"):
        sshd.backend(python=str(tmp_path / "nope" / "python3")).bench([models["onnx"]], FAST)


@needs_sshd
def test_runner_failure_and_crash(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgepruneError, match=rf"benchmark of bad.onnx on {sshd.url} failed: "
                                             "cannot load bad.onnx"):
        sshd.backend().bench([bad], FAST)
    crash = _python_wrapper(tmp_path, "crashing-python",
                            f'[ "$1" = runner.py ] && kill -SEGV $$\nexec {sys.executable} "$@"')
    with pytest.raises(EdgepruneError, match=r"benchmark of m.onnx on .* failed: .*"
                                             r"(Segmentation fault|signal 11)"):
        sshd.backend(python=crash).bench([models["onnx"]], FAST)
    assert sshd.leftovers() == []


@needs_sshd
def test_timeout_stops_the_remote_runner(sshd: Sshd, models: dict[str, Path]) -> None:
    slow = BenchOptions(threads=1, warmup=0, runs=1, min_seconds=60, timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(EdgepruneError, match=rf"m.onnx on {sshd.url} did not finish in 1 s"):
        sshd.backend().bench([models["onnx"]], slow)
    assert time.monotonic() - t0 < 20
    assert sshd.leftovers() == []


@needs_sshd
def test_failing_device_leaves_earlier_results_untouched(sshd: Sshd, models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    out, run_dir = tmp_path / "bench.json", tmp_path / "run"
    run_dir.mkdir()
    out.write_text("earlier")
    earlier = json.dumps({**FINISHED_RUN, "bench": ["earlier"]})
    (run_dir / "manifest.json").write_text(earlier)
    app = typer.Typer()
    app.command()(bench)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, [
        "bench", str(models["onnx"]), "--device", f"ssh://{sshd.user}@127.0.0.1:{free_port()}",
        "--json", str(out), "--run", str(run_dir), "-q"])
    assert isinstance(result.exception, EdgepruneError)
    assert "cannot reach" in str(result.exception)
    assert out.read_text() == "earlier"
    assert (run_dir / "manifest.json").read_text() == earlier


@needs_sshd
def test_targets_calibrate_writes_a_profile_that_reproduces_the_measurement(
        sshd: Sshd, tmp_path: Path, capsys) -> None:
    """The "board" is this machine: its profile names its cores and CPU, lists the faster
    precision first, and its roofline predicts the reference model as measured."""
    from helpers import run_cli

    from edgeprune.devices import estimate_latency, load_target
    from edgeprune.devices.estimate import ModelCost

    out = tmp_path / "myboard.toml"
    code, stdout, err = run_cli(capsys, "targets", "calibrate", "--name", "myboard", "--out",
                                str(out), "--model", "mobilenetv2", "--input-size",
                                "3x64x64", "--runs", "20", "--min-seconds", "0.2", "--json",
                                *sshd.cli_args())
    assert code == 0, err
    report = json.loads(stdout)
    profile = load_target(str(out))
    assert profile.name == "myboard" and profile.cores == os.cpu_count()
    assert profile.arch == platform.machine() and profile.threads == os.cpu_count()
    measured = report["measured_p50_ms"]
    assert list(profile.precisions) == sorted(measured, key=measured.get)
    assert all(0 < v <= 0.95 for v in profile.efficiency.values())
    for c in profile.calibration:
        cost = ModelCost(macs=int(c.macs), weight_bytes=0, activation_bytes=0,
                         precision=c.precision, ops=1)
        assert estimate_latency(cost, profile).latency_ms == pytest.approx(
            measured[c.precision], rel=0.02)
    code, _, err = run_cli(capsys, "targets", "calibrate", "--name", "myboard", "--out",
                           str(out), *sshd.cli_args())
    assert code == 2 and "exists; pass --overwrite" in err


@needs_sshd
@pytest.mark.parametrize("name", ["x:y.onnx", "-x.onnx"])
def test_file_names_that_look_like_a_host_or_an_option_are_sent_as_files(
        sshd: Sshd, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        name: str) -> None:
    shutil.copy(models["onnx"], tmp_path / name)
    monkeypatch.chdir(tmp_path)  # given as the user types it: a bare relative name
    result, = sshd.backend().bench([Path(name)], FAST)
    assert result.label == "device" and result.p50_ms > 0
    assert sshd.leftovers() == []


# --------------------------------------------------------------------------- device fleets

def _bench_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(bench)
    app.callback()(lambda: None)
    return app


def _fleet_args(sshd: Sshd, *urls: str) -> list[str]:
    args = ["--remote-python", sys.executable]
    for option in sshd.options().options:
        args += ["--ssh-option", option]
    for url in urls:
        args += ["--device", url]
    return args


@needs_sshd
def test_bench_measures_on_every_device_of_a_fleet(sshd: Sshd, second_sshd: Sshd,
                                                   models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = CliRunner().invoke(_bench_app(), [
        "bench", str(models["onnx"]), str(models["tflite"]), "--runs", "2", "--min-seconds",
        "0", "--warmup", "0", "--rounds", "2", "--json", str(out), "-q",
        *_fleet_args(sshd, sshd.url, second_sshd.url)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for url in (sshd.url, second_sshd.url):  # one table per device
        assert f"measured on {url} (device)" in result.output
    record = json.loads(out.read_text())
    assert record["schema"] == "edgeprune.bench-fleet/1"
    assert record["devices"] == [sshd.url, second_sshd.url]
    for url, device_record in zip(record["devices"], record["records"], strict=True):
        assert device_record["device"] == url
        assert [r["model"] for r in device_record["rows"]] == [str(models["onnx"]),
                                                              str(models["tflite"])]
        assert all(r["label"] == "device" and r["measurement"]["latency_ms"]["p50"] > 0
                   for r in device_record["rows"])
    assert sshd.leftovers() == [] and second_sshd.leftovers() == []


@needs_sshd
def test_a_fleet_with_an_unreachable_device_names_it_and_writes_nothing(
        sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    down = f"ssh://{sshd.user}@127.0.0.1:{free_port()}"
    out = tmp_path / "fleet.json"
    result = CliRunner().invoke(_bench_app(), [
        "bench", str(models["onnx"]), "--runs", "2", "--min-seconds", "0", "--warmup", "0",
        "--json", str(out), "-q", *_fleet_args(sshd, sshd.url, down)],
        env={"COLUMNS": "200"})
    assert result.exit_code != 0
    assert down in str(result.exception) and "Connection refused" in str(result.exception)
    assert not out.exists() and sshd.leftovers() == []
