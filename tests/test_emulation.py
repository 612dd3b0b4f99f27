"""Honest records under emulation: the runner tells qemu-user from a real ARM board (fake
/proc and /sys roots), reads the CPU of the architecture it runs on, keeps the runtimes' CPU
probe noise off stderr, and an emulated time is labelled so in the JSON, the bench table and
the report, decides no compress choice and calibrates nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import assert_one_line_error, run_cli
from rich.console import Console

from edgeprune.devices import runner
from edgeprune.devices.results import BenchOptions, BenchResult, parse_runner_output
from edgeprune.devices.ssh import CHECK_SNIPPET, DeviceFacts, SshBackend, detection_source

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu vme de pse sse sse2
"""
XEON = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n"
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
PI3_32BIT = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
CPU implementer\t: 0x41
CPU part\t: 0xd03
Model\t\t: Raspberry Pi 3 Model B Plus Rev 1.3
"""
BOARD_WITHOUT_MODEL = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n"
BINFMT_ON = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n"
             "offset 0\nmagic 7f454c460201010000000000000000000200b700\n")


def fake_root(tmp_path: Path, cpuinfo: str | None = None, binfmt: dict[str, str] | None = None,
              devicetree: bytes | None = None) -> str:
    """A root folder holding only the /proc and /sys files given."""
    if cpuinfo is not None:
        (tmp_path / "proc").mkdir(parents=True, exist_ok=True)
        (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    for name, text in (binfmt or {}).items():
        folder = tmp_path / "proc/sys/fs/binfmt_misc"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    if devicetree is not None:
        folder = tmp_path / "sys/firmware/devicetree/base"
        folder.mkdir(parents=True)
        (folder / "model").write_bytes(devicetree)
    return str(tmp_path)


# --------------------------------------------------------------------------- detection

def test_arm_process_on_an_x86_cpu_is_emulated(tmp_path: Path) -> None:
    root = fake_root(tmp_path, EPYC)
    why = runner.emulation("aarch64", root)
    assert why == "aarch64 process on an x86 CPU (AMD EPYC 7R13 Processor)"
    assert runner.cpu_model("aarch64", root) is None  # not the x86 host's name


def test_the_enabled_qemu_binfmt_entry_is_named(tmp_path: Path) -> None:
    root = fake_root(tmp_path, XEON, {"qemu-aarch64": BINFMT_ON, "qemu-arm": "disabled\n"})
    assert runner.emulation("aarch64", root) == (
        "aarch64 process on an x86 CPU (Intel(R) Xeon(R) CPU), qemu binfmt qemu-aarch64 enabled")
    assert runner.emulation("armv7l", root) == (
        "armv7l process on an x86 CPU (Intel(R) Xeon(R) CPU)")  # qemu-arm is disabled


def test_a_vendor_alone_marks_an_x86_cpu(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "vendor_id\t: AuthenticAMD\n")
    assert runner.emulation("armv7l", root) == "armv7l process on an x86 CPU (AuthenticAMD)"


@pytest.mark.parametrize(("machine", "cpuinfo", "model"), [
    ("aarch64", PI4, "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)"),
    ("armv7l", PI3_32BIT, "Raspberry Pi 3 Model B Plus Rev 1.3 (Cortex-A53)"),
    ("aarch64", BOARD_WITHOUT_MODEL, "Cortex-A55"),
    ("aarch64", "CPU implementer\t: 0x41\nCPU part\t: 0xd0b\n", "Cortex-A76"),
    ("aarch64", "CPU implementer\t: 0x51\nCPU part\t: 0x801\n", "implementer 0x51 part 0x801"),
    ("x86_64", EPYC, "AMD EPYC 7R13 Processor"),
])
def test_real_boards_are_not_emulated_and_name_their_cpu(tmp_path: Path, machine: str,
                                                         cpuinfo: str, model: str) -> None:
    root = fake_root(tmp_path, cpuinfo, {"qemu-aarch64": BINFMT_ON} if machine == "x86_64"
                     else None)
    assert runner.emulation(machine, root) is None
    assert runner.cpu_model(machine, root) == model


def test_the_device_tree_names_a_board_without_a_model_line(tmp_path: Path) -> None:
    root = fake_root(tmp_path, BOARD_WITHOUT_MODEL,
                     devicetree=b"Radxa ROCK 3 Model A\x00")
    assert runner.cpu_model("aarch64", root) == "Radxa ROCK 3 Model A (Cortex-A55)"


def test_an_x86_process_on_an_arm_cpu_is_emulated(tmp_path: Path) -> None:
    assert runner.emulation("x86_64", fake_root(tmp_path, PI4)) == (
        "x86_64 process on an ARM CPU (Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72))")


def test_a_root_without_proc_and_sys_is_read_silently(tmp_path: Path, capfd) -> None:
    info = runner.host_info(str(tmp_path))
    assert (info["emulated"], info["emulation"], info["governor"]) == (False, "", None)
    assert info["temperature_c"] is None
    assert capfd.readouterr() == ("", "")


def test_host_info_records_emulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.platform, "machine", lambda: "aarch64")
    info = runner.host_info(fake_root(tmp_path, EPYC, {"qemu-aarch64": BINFMT_ON}))
    assert info["emulated"] is True and info["machine"] == "aarch64"
    assert "x86 CPU (AMD EPYC" in info["emulation"] and "qemu-aarch64" in info["emulation"]
    assert info["cpu_model"] is None


def test_cpu_probe_noise_is_kept_off_stderr(capfd) -> None:
    with runner.native_noise_filtered():
        os.write(2, b"Error in cpuinfo: failed to parse the list of possible processors in "
                    b"/sys/devices/system/cpu/possible\n")
        os.write(2, b"Warning in cpuinfo: caches count is 0\n")
        os.write(2, b"onnxruntime cpuid_info warning: Unknown CPU vendor. cpuinfo_vendor value: "
                    b"0\n")
        os.write(2, b"onnxruntime warning: cpuinfo_initialize failed. May cause CPU EP "
                    b"performance degradation due to undetected CPU features.\n")
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"


def test_the_device_check_reads_cpu_and_emulation_as_the_runner_does(tmp_path: Path) -> None:
    """The check snippet runs the runner's own readers: both agree on a fake emulated root,
    and the snippet run here reports this machine as not emulated."""
    namespace: dict = {}
    exec(detection_source(), namespace)
    root = fake_root(tmp_path, EPYC, {"qemu-aarch64": BINFMT_ON})
    assert namespace["emulation"]("aarch64", root) == runner.emulation("aarch64", root)
    assert namespace["cpu_model"]("aarch64", root) == runner.cpu_model("aarch64", root)
    proc = subprocess.run([sys.executable, "-c", CHECK_SNIPPET], capture_output=True,
                          text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("EDGEPRUNE_FACTS "))
    facts = DeviceFacts(**json.loads(line.split(" ", 1)[1]))
    assert facts.emulated is False and facts.emulation == ""
    assert facts.cpu_model == runner.cpu_model()


# --------------------------------------------------------------------------- labels

def runner_json(emulated: bool, p50: tuple[float, ...] = (300.0, 150.0)) -> str:
    """A runner report (schema edgeprune.runner/2) for one file per p50."""
    host = {"machine": "aarch64", "cpu_model": None, "cores": 2, "governor": None,
            "temperature_c": None, "emulated": emulated,
            "emulation": "aarch64 process on an x86 CPU (AMD EPYC)" if emulated else ""}
    results = [{"model": f"m{i}.tflite", "file_size_bytes": 1000 // (i + 1), "format": "tflite",
                "precision": "fp32" if i == 0 else "int8", "runtime": "ai-edge-litert",
                "runtime_version": "2.3.0", "threads": 2, "warmup": 0, "runs": 3,
                "min_seconds": 0, "seed": 0, "timed_seconds": 1.0, "inputs": [],
                "load_ms": 1.0, "first_inference_ms": ms,
                "latency_ms": {k: ms for k in ("min", "mean", "p50", "p90", "p99", "max")}
                | {"std": 0.0}, "rounds_p50_ms": [ms, ms], "peak_rss_mb": 50.0, "host": host,
                "python": "3.11.2", "eval": None} for i, ms in enumerate(p50)]
    return json.dumps({"schema": runner.SCHEMA, "rounds": 2, "interleaved": True,
                       "emulated": emulated, "emulation": host["emulation"],
                       "results": results})


def test_an_emulated_report_is_labelled_emulated_whatever_the_backend() -> None:
    emulated = parse_runner_output(runner_json(True), "device", "ssh://pi@box")
    assert [r.label for r in emulated] == ["emulated", "emulated"]
    assert emulated[0].emulated and "AMD EPYC" in emulated[0].emulation
    real = parse_runner_output(runner_json(False), "device", "ssh://pi@box")
    assert [r.label for r in real] == ["device", "device"] and not real[0].emulated


def test_bench_table_and_json_label_emulated_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeprune.cli.devices import bench_table
    from edgeprune.jobs import bench as bench_job

    results = parse_runner_output(runner_json(True), "device", "ssh://pi@box")

    class Box:
        label, device = "device", "ssh://pi@box"

        def bench(self, paths, options):
            return results

    monkeypatch.setattr(bench_job, "get_backend", lambda device, ssh: Box())
    paths = []
    for name in ("m0.tflite", "m1.tflite"):
        path = Path(name)
        paths.append(path)
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    options = BenchOptions(threads=2, runs=3, rounds=2)
    rows = bench_job.bench_rows(paths, bench_job.load_target("rpi4"), "ssh://pi@box", options)
    record = bench_job.bench_record(rows, "rpi4", "ssh://pi@box", options)
    assert [r["label"] for r in record["rows"]] == ["emulated", "emulated"]
    assert record["rows"][0]["measurement"]["host"]["emulated"] is True
    out = io.StringIO()
    Console(file=out, width=400).print(bench_table(rows, "rpi4", options))
    text = out.getvalue()
    assert "(emulated)" in text  # the title: where it was measured
    assert "emulated: timed under qemu (aarch64 process on an x86 CPU (AMD EPYC))" in text
    assert text.count(" emulated") >= 3  # and each row's where column


def test_report_rows_of_emulated_times_are_kind_emulated() -> None:
    from edgeprune.report.numbers import _bench_latency, _compress_latency

    summary = {tag: {"files": {"tflite": {
        "path": f"models/{tag}.tflite", "precision": "fp32",
        "latency_ms": {"p50": 300.0}, "latency_label": "ssh://pi@box, 2 threads, emulated"}}}
        for tag in ("dense", "pruned")}
    assert {r["kind"] for r in _compress_latency(summary)} == {"emulated"}
    manifest = {"bench": [{"device": "ssh://pi@box", "options": {"threads": 2}, "rows": [
        {"model": "m.tflite", "label": "emulated", "measurement": {"latency_ms": {"p50": 3}}},
        {"model": "n.tflite", "label": "device", "measurement": {"latency_ms": {"p50": 3}}}]}]}
    assert [r["kind"] for r in _bench_latency(manifest, {})] == ["emulated", "measured"]


# --------------------------------------------------------------------------- decisions

def candidates(label: str) -> list:
    from edgeprune.jobs.candidates import Candidate

    def one(precision: str, speedup: float, estimate: float) -> Candidate:
        return Candidate("pruned", precision, "tflite", f"{precision}.tflite", 100, 0.9,
                         latency_ms={"p50": 1 / speedup}, latency_label=label,
                         speedup={"value": speedup, "low": speedup, "high": speedup,
                                  "rounds": 2},
                         estimate_ms=1 / estimate, estimate_speedup=estimate,
                         estimate_label="rpi4 estimate", within_tolerance=True,
                         drop_points=0.0)

    return [one("fp32", 1.0, 1.0), one("int8", 0.5, 2.0), one("fp16", 3.0, 0.9)]


def test_emulated_device_times_decide_nothing_in_compress(capsys) -> None:
    """Under emulation the target's estimate chooses (int8 here), not qemu's times (which
    would pick fp16), and one line says so."""
    from edgeprune import console
    from edgeprune.jobs.candidates import choose, decided_on_device

    console.set_quiet(False)
    emulated = candidates("ssh://pi@box, 2 threads, emulated")
    on_device, decided_by = decided_on_device(emulated, "ssh://pi@box", "rpi4")
    assert on_device is False and decided_by.startswith("the rpi4 estimate (ssh://pi@box is "
                                                        "emulated")
    assert choose(emulated, 1.0, None, "", by_estimate=not on_device).shipped.precision == "int8"
    err = capsys.readouterr().err
    assert "runs under emulation (qemu)" in err and len(err.strip().splitlines()) == 1
    real = candidates("ssh://pi@box, 2 threads")
    assert decided_on_device(real, "ssh://pi@box", "rpi4") == (
        True, "the speedup measured on ssh://pi@box")
    assert choose(real, 1.0, None, "", by_estimate=False).shipped.precision == "fp16"
    assert decided_on_device(real, None, "rpi4")[0] is False


# --------------------------------------------------------------------------- calibrate

def emulated_results(paths: list[Path]) -> list[BenchResult]:
    return parse_runner_output(runner_json(True, (30.0, 15.0)), "device", "ssh://box")


def test_calibrate_refuses_an_emulated_measurement(sshd, tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The device check passes (this machine, not emulated) and the runner reports
    emulation: one line, no profile written."""
    from edgeprune.jobs import calibrate

    monkeypatch.setattr(calibrate, "_reference_files", lambda *a: (tmp_path / "a.tflite",
                                                                   tmp_path / "b.tflite"))
    monkeypatch.setattr(calibrate, "count_model", lambda path: SimpleNamespace(macs=10**6))
    monkeypatch.setattr(SshBackend, "bench", lambda self, paths, options:
                        emulated_results(paths))
    out = tmp_path / "box.toml"
    code, _, err = run_cli(capsys, "targets", "calibrate", "--name", "box", "--out", str(out),
                           *sshd.cli_args())
    assert_one_line_error(code, err, "runs under emulation (aarch64 process on an x86 CPU "
                                     "(AMD EPYC)): its times say nothing of a board's speed")
    assert not out.exists()


def test_calibrate_refuses_an_emulated_device_before_measuring(
        sshd, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeprune.jobs import calibrate

    real_facts = SshBackend.facts

    def emulated_facts(self, modules, timeout_s=None):
        facts = real_facts(self, modules, timeout_s)
        return DeviceFacts(**{**facts.__dict__, "machine": "aarch64", "emulated": True,
                              "emulation": "aarch64 process on an x86 CPU (AMD EPYC)"})

    def never(*args):
        raise AssertionError("exported the reference model for an emulated device")

    monkeypatch.setattr(SshBackend, "facts", emulated_facts)
    monkeypatch.setattr(calibrate, "_reference_files", never)
    out = tmp_path / "box.toml"
    code, _, err = run_cli(capsys, "targets", "calibrate", "--name", "box", "--out", str(out),
                           *sshd.cli_args())
    assert_one_line_error(code, err, "runs under emulation")
    assert not out.exists()


def test_the_device_check_line_says_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """What compress prints when it first reaches the device."""
    from edgeprune.devices.ssh import parse_ssh_url

    def prepare(self, suffixes, timeout_s):
        self.found = DeviceFacts("aarch64", 2, None, None, None, "3.11.2",
                                 {"numpy": "2.4.6", "ai_edge_litert": "2.3.0"}, True,
                                 "aarch64 process on an x86 CPU (AMD EPYC)")
        return "/tmp/edgeprune-bench.x"

    monkeypatch.setattr(SshBackend, "prepare", prepare)
    monkeypatch.setattr(SshBackend, "remove", lambda self, folder: None)
    line = SshBackend(parse_ssh_url("ssh://pi@box")).check([".tflite"])
    assert line.startswith("ssh://pi@box reachable, aarch64 (emulated: aarch64 process on an "
                           "x86 CPU (AMD EPYC)), Python 3.11.2")
