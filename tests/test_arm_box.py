"""ARM devices: what a 32-bit ARM OS (armv7l) is told where PyPI has no wheel (fast tests),
and every device path through the aarch64 box that `tools/arm_box.sh` builds (slow tests,
skipped when the box is not built; docs/DEVICES.md, "A Pi without a Pi")."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli

from edgeprune.devices.deploy import Deployment
from edgeprune.devices.formats import ARM32, FORMATS, format_named
from edgeprune.devices.ssh import DeviceFacts, SshBackend, parse_ssh_url
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.deploy import check_arm32

# --------------------------------------------------------------------------- armv7l


def facts(machine: str, **modules: str | None) -> DeviceFacts:
    return DeviceFacts(machine=machine, cores=4, cpu_model=None, max_mhz=None, ram_mb=None,
                       python="3.11.2", modules={"numpy": "1.24.2", **modules})


def test_every_runtime_without_an_armv7_wheel_names_what_works_instead() -> None:
    for fmt in FORMATS.values():
        assert fmt.arm32, fmt.name  # matrix in docs/DEVICES.md: none has an armv7l wheel
        line = fmt.install_line("armv7l")
        assert line.startswith(f"{fmt.package} has no armv7l wheel: ") and "64-bit OS" in line
        assert fmt.install_line("aarch64") == fmt.install == f"pip install {fmt.package}"
    assert "tflite-runtime==2.14.0" in format_named("tflite").install_line("armv7l")
    assert "ship .tflite" in format_named("onnx").install_line("armv7l")
    assert set(ARM32) >= {"armv7l", "armv6l"}


def test_the_device_check_on_armv7_names_apt_numpy_and_the_runtime_alternative() -> None:
    backend = SshBackend(parse_ssh_url("ssh://pi@pi3"))
    onnx = format_named("onnx")
    with pytest.raises(EdgepruneError, match="onnxruntime has no armv7l wheel: ship .tflite"):
        backend.check_versions(facts("armv7l", onnxruntime=None), onnx.modules,
                               onnx.install_line("armv7l"))
    with pytest.raises(EdgepruneError, match="apt install python3-numpy"):
        backend.check_versions(dataclasses.replace(facts("armv7l"), modules={}),
                               onnx.modules, "")


def deployment(machine: str, missing: list[str], result=None) -> Deployment:
    return Deployment("ssh://pi@pi3", "/home/pi/edgeprune/run", ["m.tflite"], facts(machine),
                      missing, result)


def test_deploy_on_armv7_names_what_works_in_one_line(capsys) -> None:
    model = Path("model.int8.tflite")
    with pytest.raises(EdgepruneError) as e:
        check_arm32(deployment("armv7l", ["ai-edge-litert==2.3.0"]), model)
    line = str(e.value)
    assert "\n" not in line and "runs a 32-bit ARM OS (armv7l)" in line
    assert "ai-edge-litert has no armv7l wheel: pip install tflite-runtime==2.14.0" in line
    assert "the files were copied to /home/pi/edgeprune/run" in line
    with pytest.raises(EdgepruneError, match="lacks numpy: no numpy wheel for 32-bit ARM"):
        check_arm32(deployment("armv7l", ["numpy==2.4.6", "ai-edge-litert==2.3.0"]), model)
    check_arm32(deployment("aarch64", ["ai-edge-litert==2.3.0"]), model)  # the CLI's pip line
    check_arm32(deployment("armv7l", ["pillow==13.0.0"]), model)  # a note, from the CLI


def test_deploy_on_armv7_notes_the_runtime_that_ran_the_file(capsys) -> None:
    from edgeprune import console

    console.set_quiet(False)
    ran = SimpleNamespace(runtime="tflite-runtime", runtime_version="2.14.0")
    check_arm32(deployment("armv7l", [], ran), Path("model.tflite"))
    err = capsys.readouterr().err
    assert "ai-edge-litert has no wheel; it ran the file with tflite-runtime 2.14.0" in err


def test_an_armv7_device_reached_over_ssh_is_told_what_works(sshd, tmp_path: Path) -> None:
    """This machine posing as a 32-bit Pi without onnxruntime: the check over a real sshd
    names the armv7 alternative, not `pip install onnxruntime`."""
    shadow = tmp_path / "shadow"
    (shadow / "onnxruntime").mkdir(parents=True)
    (shadow / "onnxruntime" / "__init__.py").write_text("raise ImportError('hidden')\n")
    (shadow / "sitecustomize.py").write_text(
        "import platform\nplatform.machine = lambda: 'armv7l'\n")
    python = tmp_path / "python-armv7l"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    with pytest.raises(EdgepruneError) as e:
        sshd.backend(python=str(python)).check([".onnx"])
    assert "onnxruntime has no armv7l wheel: ship .tflite" in str(e.value)
    assert sshd.leftovers() == []


# --------------------------------------------------------------------------- the aarch64 box

BOX = Path(os.environ.get("EDGEPRUNE_ARM_BOX", Path.home() / ".cache/edgeprune/arm-box"))
SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "arm_box.sh"


def box_url() -> str | None:
    """ssh://... of the running box, or None (not built, or its sshd is not running)."""
    state = BOX / "box.json"
    if not state.is_file():
        return None
    info = json.loads(state.read_text())
    probe = subprocess.run(["ssh", *box_ssh_args(info), "true"], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    return info["url"] if probe.returncode == 0 else None


def box_ssh_args(info: dict) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={info['known_hosts']}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"IdentityFile={info['key']}",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-p", str(info["port"]),
            f"{info['user']}@127.0.0.1"]


@pytest.fixture(scope="module")
def box() -> dict:
    """The box's connection (box.json written by tools/arm_box.sh), skipping when absent."""
    if not shutil.which("ssh"):
        pytest.skip("needs the OpenSSH client")
    url = box_url()
    if url is None:
        pytest.skip(f"the aarch64 box is not running: build and start it with {SCRIPT} "
                    f"(root under {BOX})")
    return json.loads((BOX / "box.json").read_text())


def box_cli_args(info: dict) -> list[str]:
    args = ["--device", info["url"], "--remote-python", info["python"]]
    for option in (f"UserKnownHostsFile={info['known_hosts']}",
                   "StrictHostKeyChecking=accept-new", f"IdentityFile={info['key']}",
                   "IdentitiesOnly=yes", "LogLevel=ERROR"):
        args += ["--ssh-option", option]
    return args


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished demo run (0.2 epochs, no QAT), made only when a test that asks for it runs
    (each asks for its box first, so none is made when no box runs)."""
    out = tmp_path_factory.mktemp("armrun") / "run"
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compress", "--target", "rpi4",
                           "--dataset", "demo", "--flops-reduction", "0.5", "--epochs", "0.2",
                           "--qat-epochs", "0", "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_deploy_into_the_box_matches_the_host_top1(box: dict, demo_run: Path, capsys,
                                                   tmp_path: Path) -> None:
    from edgeprune.devices import bench_local

    code, out, err = run_cli(capsys, "deploy", str(demo_run), "--runs", "3", "--min-seconds",
                             "0", "--remote-dir", "~/edgeprune/armrun", *box_cli_args(box))
    assert code == 0, err
    assert "SHA256SUMS match" in out and "emulated (aarch64 process on an x86 CPU" in out
    top1 = float(out.split("top-1 ")[1].split("%")[0])
    summary = json.loads((demo_run / "summary.json").read_text())
    shipped = demo_run / "ship" / Path(summary["shipped"]["path"]).name
    here = bench_local(shipped, runs=1, min_seconds=0, eval=True)
    assert top1 == pytest.approx(here.top1 * 100, abs=0.051)


@pytest.mark.slow
def test_bench_in_the_box_labels_every_file_emulated(box: dict, demo_run: Path, capsys,
                                                     tmp_path: Path) -> None:
    files = sorted((demo_run / "models").glob("*.tflite"))[:3]
    out_json = tmp_path / "bench.json"
    code, out, err = run_cli(capsys, "bench", *map(str, files), "--target", "rpi4", "--runs",
                             "2", "--min-seconds", "0", "--warmup", "0", "--rounds", "2",
                             "--json", str(out_json), *box_cli_args(box))
    assert code == 0, err
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["label"] for r in rows] == ["emulated"] * len(files)
    assert all(r["measurement"]["host"]["machine"] == "aarch64" for r in rows)
    assert "emulated: timed under qemu" in out


@pytest.mark.slow
def test_predict_in_the_box_classifies_an_image_file_as_the_host_does(box: dict,
                                                                      demo_run: Path) -> None:
    """predict.py on a real PNG file, in the box and here: the same classes, the same
    probabilities (the aarch64 builds' numerics), and no cpuinfo noise on stderr."""
    from PIL import Image

    remote = "edgeprune/armrun-predict"  # relative: the login's home, for ssh and scp alike
    ship = demo_run / "ship"
    image = demo_run / "probe.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    ssh = box_ssh_args(box)
    subprocess.run(["ssh", *ssh, f"mkdir -p {remote}"], check=True, timeout=60)
    scp = ["scp", "-q", *ssh[:-3], "-P", str(box["port"]), *map(str, ship.iterdir()),
           str(image), f"{box['user']}@127.0.0.1:{remote}/"]
    subprocess.run(scp, check=True, timeout=300)
    proc = subprocess.run(["ssh", *ssh, f"cd {remote} && {box['python']} predict.py probe.png "
                           "--top 3 --json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "cpuinfo" not in proc.stderr
    here = subprocess.run([sys.executable, str(ship / "predict.py"), str(image), "--top", "3",
                           "--json"], capture_output=True, text=True, timeout=600, check=True)
    box_top, host_top = (json.loads(out)[0]["top"] for out in (proc.stdout, here.stdout))
    assert [t["index"] for t in box_top] == [t["index"] for t in host_top]
    for a, b in zip(box_top, host_top, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-3)


@pytest.mark.slow
def test_calibrate_refuses_the_box_in_one_line(box: dict, tmp_path: Path, capsys) -> None:
    """The device check itself finds the emulation, before any model is exported."""
    from helpers import assert_one_line_error

    out = tmp_path / "box.toml"
    code, _, err = run_cli(capsys, "targets", "calibrate", "--name", "box", "--out", str(out),
                           *box_cli_args(box))
    assert_one_line_error(code, err, "runs under emulation (aarch64 process on an x86 CPU")
    assert not out.exists()


@pytest.mark.slow
def test_compress_with_the_box_as_device_lets_the_estimate_decide(box: dict,
                                                                  tmp_path: Path) -> None:
    """The candidates are measured in the box, labelled emulated, and the rpi4 estimate
    chooses, as without a device; the report says so."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compress", "--target", "rpi4",
                           "--dataset", "demo", "--flops-reduction", "0.5", "--epochs", "0",
                           "--qat-epochs", "0", "--bench-runs", "2", "--bench-seconds", "0",
                           "--bench-rounds", "2", "--out", str(out), *box_cli_args(box)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decided_by"].startswith(f"the rpi4 estimate ({box['url']} is emulated")
    assert all(c["latency_label"].endswith(", emulated") for c in summary["candidates"])
    assert "runs under emulation (qemu)" in proc.stderr
    assert "emulated: not a device" in (out / "report.html").read_text()


@pytest.mark.slow
def test_every_precision_in_the_box_is_within_the_export_tolerance(box: dict, demo_run: Path,
                                                                   tmp_path: Path) -> None:
    """fp32, fp16, int8 PTQ and QAT files of the demo run, through the runner in the box and
    here on the run's shipped eval batch: each within the tolerance the export verification
    holds that precision to (benchmarks/bench_arm_box.py `parity`), or the test fails."""
    sys.path.insert(0, str(SCRIPT.parent.parent / "benchmarks"))
    import bench_arm_box as bench

    fp16 = tmp_path / "fp16"
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "export",
                           str(demo_run / "model.pt"), "--dataset", "demo", "--precision", "fp16",
                           "--format", "tflite,onnx", "--stem", "pruned", "--eval-samples",
                           "200", "--out", str(fp16), "-q"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench.qat_export(demo_run / "model.pt", tmp_path / "qat")
    models = demo_run / "models"
    files = [*sorted(models.glob("*.tflite")), *sorted(models.glob("*.onnx")),
             *sorted(fp16.glob("pruned.fp16.tflite")), *sorted(fp16.glob("pruned.fp16.onnx")),
             *sorted((tmp_path / "qat").glob("*.tflite"))]
    result = bench.measure("test", files, models / bench.DEMO_SAMPLES, tmp_path, box)
    rows = result["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "fp16", "int8", "int8-qat"}
    assert result["box"]["machine"] == "aarch64" and result["box"]["emulated"]
    outside = [f"{r['file']}: {'; '.join(r['failures'])}" for r in rows if not r["passed"]]
    assert outside == []


# --------------------------------------------------------------------------- the armhf box

BOX32 = Path(os.environ.get("EDGEPRUNE_ARM_BOX_ARMHF",
                            Path.home() / ".cache/edgeprune/arm-box-armhf"))


@pytest.fixture(scope="module")
def armhf_box() -> dict:
    """The 32-bit box (`tools/arm_box.sh --arch armhf`), skipping when it is not running."""
    state = BOX32 / "box.json"
    if not shutil.which("ssh") or not state.is_file():
        pytest.skip(f"the armhf box is not built: sudo {SCRIPT} --arch armhf")
    info = json.loads(state.read_text())
    probe = subprocess.run(["ssh", *box_ssh_args(info), "true"], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    if probe.returncode:
        pytest.skip(f"the armhf box is not running: sudo {SCRIPT} --arch armhf")
    return info


@pytest.mark.slow
def test_a_tflite_runs_in_the_armhf_box_with_tflite_runtime(armhf_box: dict, demo_run: Path,
                                                            capsys) -> None:
    """armv7l Debian bookworm with tflite-runtime 2.14.0 from PyPI over apt's numpy: deploy
    of a .tflite ship folder checks, runs its eval batch and says which runtime ran it."""
    from edgeprune import console

    console.set_quiet(False)
    code, out, err = run_cli(capsys, "deploy", str(demo_run), "--runs", "2", "--min-seconds",
                             "0", "--remote-dir", "~/edgeprune/armhf-run",
                             *box_cli_args(armhf_box))
    assert code == 0, err
    assert "SHA256SUMS match" in out and "emulated (armv7l process on an x86 CPU" in out
    assert "it ran the file with tflite-runtime 2.14.0" in out + err


@pytest.mark.slow
def test_an_onnx_file_on_the_armhf_box_is_told_what_works_in_one_line(
        armhf_box: dict, demo_run: Path, capsys) -> None:
    from helpers import assert_one_line_error

    code, _, err = run_cli(capsys, "bench", str(demo_run / "models" / "pruned.onnx"),
                           "--runs", "1", "--min-seconds", "0", *box_cli_args(armhf_box))
    assert_one_line_error(code, err, "onnxruntime has no armv7l wheel: ship .tflite")
