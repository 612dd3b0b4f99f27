"""Numerical parity on aarch64: every precision of the demo model and of a 224-pixel MobileNetV2,
run by the device runner in the aarch64 box (tools/arm_box.sh: Debian bookworm, Python 3.11,
the aarch64 wheels of ai-edge-litert and onnxruntime, under qemu-user) and on this host, on the
same eval batch; top-1 on each side and the largest logit difference.

    sudo tools/arm_box.sh                      # the box, built once and cached
    sudo tools/arm_box.sh --arch armhf         # the 32-bit box, for the armhf suite
    python benchmarks/bench_arm_box.py [--only demo,mobilenet,armhf] [--work DIR]
        [--mobilenet-samples 20] [--out benchmarks/results]

demo: `edgeprune compress --target rpi4 --dataset demo --flops-reduction 0.5 --epochs 1
--qat-epochs 0` (dense and pruned, fp32 and int8 PTQ, .tflite and .onnx), then
`edgeprune export RUN/model.pt --precision fp16` of the pruned checkpoint and a pruned int8-qat
.tflite from 0.2 epochs of quantization-aware training (`edgeprune.training.qat`), all on the
run's shipped eval batch (`models/pruned.samples.npz`, 100 images).
mobilenet: `torchvision:mobilenet_v2` with untrained weights (no download here) at 3x224x224
on the synthetic dataset (4 classes of smooth random patterns, so a 4-way head on the full
MobileNetV2 backbone), exported fp32, fp16 and int8 PTQ in both formats, on
`--mobilenet-samples` test images (each takes seconds under qemu). Its top-1 is chance: only
the difference between the machines means something. QAT of it is left out (minutes of CPU
training per epoch fraction on this 2-core host, for no more numerics than the demo's QAT).
armhf: the demo's .tflite files in the 32-bit box (armv7l Debian bookworm, tflite-runtime
2.14.0 over apt's numpy: the only TFLite runtime with an armv7l wheel) against this host's
ai-edge-litert; the .onnx files cannot run there (no onnxruntime wheel for armv7l).

Each file passes when the box reproduces the host within the tolerance the export verification
holds that precision to (`edgeprune.export.precision.DEFAULT_CHECKS`, see `parity`). Steps whose
files exist in --work are not repeated. Latencies are not recorded: under qemu they are emulated
and mean nothing. Writes arm_parity.json and arm_parity.md into --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNNER = REPO / "devices" / "runner.py"
BOX = Path.home() / ".cache" / "edgeprune" / "arm-box"
BOX32 = Path.home() / ".cache" / "edgeprune" / "arm-box-armhf"
DEMO_SAMPLES = "pruned.samples.npz"
SUITES = ("demo", "mobilenet", "armhf")


@dataclass
class Parity:
    """One file on both machines: top-1 (correct of `samples`) on each, the share of samples
    whose class agrees, the largest |logit difference|, and the checks it fails (none: it
    passes)."""

    file: str
    precision: str
    samples: int
    correct_host: int
    correct_box: int
    same_class: float
    max_abs_diff: float
    tolerance: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def tolerance_text(precision: str) -> str:
    """The export verification's tolerance for `precision`, as the table states it."""
    from edgeprune.export.precision import DEFAULT_CHECKS

    check = DEFAULT_CHECKS[precision]
    if check.atol is not None:
        return f"every logit within {check.atol:g} + {check.rtol:g} x abs(host)"
    return (f"top-1 within {check.max_accuracy_drop:g} point(s), same class on "
            f">= {check.min_agreement:.0%}")


def parity(file: str, precision: str, host: np.ndarray, box: np.ndarray,
           labels: np.ndarray) -> Parity:
    """Whether the box's logits reproduce the host's for one file, judged as the export
    verification judges a file against PyTorch (the host standing for the reference):
    fp32 logits within atol + rtol*|ref| and the same class on every decisive sample; fp16 and
    int8 the same class on at least the precision's agreement floor and top-1 on the labels
    within its accuracy tolerance, in either direction (the box is not allowed to be better
    either: it is meant to be the same computation)."""
    from edgeprune.export.precision import DEFAULT_CHECKS
    from edgeprune.export.validate import compare, top1

    check = DEFAULT_CHECKS[precision]
    n = len(labels)
    if host.shape != box.shape or len(host) != n:
        return Parity(file, precision, n, 0, 0, 0.0, float("inf"), tolerance_text(precision),
                      [f"logits of shape {box.shape} in the box, {host.shape} here, "
                       f"{n} labels"])
    metrics = compare(host, box, check)
    correct_host = int(np.sum(top1(host) == labels))
    correct_box = int(np.sum(top1(box) == labels))
    failures = list(metrics.failures)
    if check.max_accuracy_drop is not None:
        points = abs(correct_box - correct_host) * 100 / n
        if points > check.max_accuracy_drop:
            failures.append(f"top-1 {correct_box}/{n} in the box vs {correct_host}/{n} here: "
                            f"{points:.2f} points apart, more than "
                            f"{check.max_accuracy_drop:g} allowed")
    diff = float(np.max(np.abs(box.astype(np.float64) - host))) if host.size else 0.0
    return Parity(file, precision, n, correct_host, correct_box,
                  float(np.mean(top1(box) == top1(host))),
                  diff if np.isfinite(box).all() else float("inf"), tolerance_text(precision),
                  failures)


# --------------------------------------------------------------------------- the files


def sh(cmd: list[str], timeout: float = 7200) -> str:
    """Run a command, return stdout; exit with its stderr's tail when it fails."""
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def demo_files(work: Path) -> tuple[list[Path], Path]:
    """The demo run's files, the fp16 exports and the QAT file; (files, eval batch)."""
    run = work / "demo"
    if not (run / "summary.json").is_file():
        sh(["edgeprune", "compress", "--target", "rpi4", "--dataset", "demo",
            "--flops-reduction", "0.5", "--epochs", "1", "--qat-epochs", "0",
            "--out", str(run), "--overwrite", "-q"])
    fp16 = work / "demo-fp16"
    if not fp16.is_dir():
        sh(["edgeprune", "export", str(run / "model.pt"), "--dataset", "demo", "--precision",
            "fp16", "--format", "tflite,onnx", "--stem", "pruned", "--eval-samples", "500",
            "--out", str(fp16), "-q"])
    qat = work / "demo-qat"
    if not qat.is_dir():
        qat_export(run / "model.pt", qat)
    files = sorted((run / "models").glob("*.tflite")) + sorted((run / "models").glob("*.onnx"))
    files += sorted(fp16.glob("*.tflite")) + sorted(fp16.glob("*.onnx"))
    files += sorted(qat.glob("*.tflite"))
    return files, run / "models" / DEMO_SAMPLES


def qat_export(checkpoint: Path, out: Path) -> None:
    """0.2 epochs of quantization-aware training of the pruned checkpoint, exported int8-qat
    (what compress does when PTQ loses too much; compress only does it then)."""
    from edgeprune.export.api import export_model
    from edgeprune.export.base import ExportOptions
    from edgeprune.jobs.loading import load_model_and_data, take
    from edgeprune.training.loop import TrainConfig
    from edgeprune.training.qat import train_qat

    print(f"qat: 0.2 epochs from {checkpoint}", flush=True)
    md = load_model_and_data(str(checkpoint), dataset="demo", seed=0)
    result = train_qat(md.loaded.model, md.data, TrainConfig(epochs=0.2, lr=0.001,
                                                             batch_size=128, seed=0),
                       evaluate=False)
    x, y = take(md.data, "test", 500, 0)
    export_model(result.model, md.spec, out, x[:32], formats=["tflite"], stem="pruned",
                 verify=False, precisions=["int8-qat"], eval_samples=(x, y),
                 options=ExportOptions(quantizer=result.quantizer))


def mobilenet_files(work: Path, samples: int) -> tuple[list[Path], Path]:
    """Untrained MobileNetV2 at 3x224x224 (synthetic images) in fp32, fp16 and int8;
    (files, eval batch)."""
    out = work / "mobilenet"
    batch = work / f"mobilenet.samples-{samples}.npz"
    if not out.is_dir():
        sh(["edgeprune", "export", "torchvision:mobilenet_v2", "--dataset", "synthetic",
            "--input-size", "3x224x224", "--precision", "fp32,fp16,int8",
            "--format", "tflite,onnx", "--calibration-samples", "64", "--eval-samples", "32",
            "--no-verify", "--out", str(out), "-q"])
    if not batch.is_file():
        from edgeprune.devices import write_eval_samples
        from edgeprune.jobs.loading import load_data, take

        data = load_data("synthetic", input_size="3x224x224", seed=0)
        x, y = take(data, "test", samples, 1)
        write_eval_samples(batch, x.numpy(), y.numpy())
    files = sorted(out.glob("*.tflite")) + sorted(out.glob("*.onnx"))
    return files, batch


# --------------------------------------------------------------------------- the runs

RUNNER_ARGS = ["--eval", "--runs", "1", "--min-seconds", "0", "--warmup", "0", "--rounds", "1"]


def attempt(cmd: list[str], timeout: float = 7200) -> tuple[dict | None, str]:
    """Run a runner command: (its JSON report, "") or (None, its error line)."""
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"exit code {proc.returncode}"
    return json.loads(proc.stdout), ""


def run_here(file: Path, batch: Path, logits: Path) -> tuple[dict | None, str]:
    """The runner on this host on one file (logits saved to `logits`)."""
    return attempt([sys.executable, str(RUNNER), str(file), *RUNNER_ARGS, "--samples",
                    str(batch), "--logits", str(logits)])


def box_info(box: Path = BOX, arch: str = "") -> dict:
    """The running box's connection (box.json), or exit saying how to start it."""
    state = box / "box.json"
    if not state.is_file():
        sys.exit(f"the box {box} is not built: sudo {REPO / 'tools' / 'arm_box.sh'} {arch}")
    return json.loads(state.read_text())


def ssh_options(info: dict) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={info['known_hosts']}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"IdentityFile={info['key']}",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]


class Box:
    """The box over ssh: a folder there holding the files, their sidecars, the batch and the
    runner, and the runner run on one file at a time with the box's Python (one file that
    fails to load must not hide the others' figures)."""

    def __init__(self, info: dict, name: str, files: list[Path], batch: Path) -> None:
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            sys.exit(f"two files share a name in {name}: {names}")
        self.info, self.batch = info, batch
        self.remote = f"edgeprune/parity-{name}"  # relative: the login's home (ssh and scp)
        self.target = f"{info['user']}@127.0.0.1"
        self.ssh = ["ssh", *ssh_options(info), "-p", str(info["port"]), self.target]
        self.scp = ["scp", "-q", *ssh_options(info), "-P", str(info["port"])]
        sh([*self.ssh, f"rm -rf {self.remote} && mkdir -p {self.remote}"])
        sidecars = [f.with_name(f.name + ".json") for f in files]
        sh([*self.scp, str(RUNNER), str(batch), *map(str, files),
            *(str(c) for c in sidecars if c.is_file()), f"{self.target}:{self.remote}/"])

    def run(self, file: Path, logits: Path) -> tuple[dict | None, str]:
        report, error = attempt([*self.ssh, f"cd {self.remote} && {self.info['python']} "
                                 f"runner.py {file.name} {' '.join(RUNNER_ARGS)} --samples "
                                 f"{self.batch.name} --logits {file.name}.logits.npz"],
                                timeout=14400)
        if report is not None:
            sh([*self.scp, f"{self.target}:{self.remote}/{file.name}.logits.npz", str(logits)])
        return report, error


def precision_of(path: Path) -> str:
    sidecar = path.with_name(path.name + ".json")
    return json.loads(sidecar.read_text())["precision"]


def failed_row(file: str, precision: str, samples: int, where: str, error: str) -> dict:
    p = Parity(file, precision, samples, 0, 0, 0.0, float("inf"), tolerance_text(precision),
               [f"{where}: {error}"])
    return row(p)


def row(p: Parity) -> dict:
    """A Parity as a JSON row: an infinite difference (nothing to compare) as null."""
    return asdict(p) | {"passed": p.passed,
                        "max_abs_diff": p.max_abs_diff if np.isfinite(p.max_abs_diff) else None}


def measure(name: str, files: list[Path], batch: Path, work: Path, info: dict) -> dict:
    """Both machines on each of `files`; the suite's rows and what ran them. A file that
    does not run on one side is a failed row with that side's error line."""
    t0 = time.perf_counter()
    labels = np.load(batch)["y"]
    box = Box(info, name, files, batch)
    rows, box_runtimes, host_runtimes, facts = [], {}, {}, {}
    for f in files:
        label, precision = f"{f.parent.name}/{f.name}", precision_of(f)
        here_npz, box_npz = work / f"{name}.{f.name}.host.npz", work / f"{name}.{f.name}.box.npz"
        here, error = run_here(f, batch, here_npz)
        if here is None:
            rows.append(failed_row(label, precision, len(labels), "here", error))
            continue
        there, error = box.run(f, box_npz)
        if there is None:
            rows.append(failed_row(label, precision, len(labels), "in the box", error))
            continue
        with np.load(here_npz) as h, np.load(box_npz) as b:
            p = parity(label, precision, h[f.name], b[f.name], labels)
        rows.append(row(p))
        result, host_result = there["results"][0], here["results"][0]
        box_runtimes[f.name] = f"{result['runtime']} {result['runtime_version']}"
        host_runtimes[f.name] = f"{host_result['runtime']} {host_result['runtime_version']}"
        facts = {"box": {"machine": result["host"]["machine"], "python": result["python"],
                         "emulated": there["emulated"], "emulation": there["emulation"]},
                 "host": {"machine": host_result["host"]["machine"],
                          "python": host_result["python"]}}
    return {"rows": rows, "eval_batch": str(batch), "samples": int(len(labels)),
            "box": {**facts.get("box", {}), "runtimes": box_runtimes},
            "host": {**facts.get("host", {}), "runtimes": host_runtimes},
            "wall_s": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- the table


def markdown(results: dict) -> str:
    lines = ["# Numerical parity on ARM (the emulated boxes against this host)", "",
             f"Made by `python benchmarks/bench_arm_box.py` (a suite at a time: `--only NAME`), "
             f"last on {results['date']}.", ""]
    for name, suite in results["suites"].items():
        box, host = suite["box"], suite["host"]
        runtimes = sorted(set(box["runtimes"].values()))
        lines += [f"## {name}", "",
                  f"{suite['samples']} eval images ({Path(suite['eval_batch']).name}); box: "
                  f"{box.get('machine')}, Python {box.get('python')}, {', '.join(runtimes)}, "
                  f"emulated: {box.get('emulation')}; host: {host.get('machine')}, Python "
                  f"{host.get('python')}, {', '.join(sorted(set(host['runtimes'].values())))}."
                  " Latencies not recorded (emulated).", "",
                  "| file | precision | top-1 host | top-1 box | same class | "
                  "max abs logit difference | tolerance (export check) | within |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for r in suite["rows"]:
            n, diff = r["samples"], r["max_abs_diff"]
            figures = ["-"] * 4  # it did not run on one side: its error says why
            if diff is not None:
                figures = [f"{r['correct_host']}/{n}", f"{r['correct_box']}/{n}",
                           f"{r['same_class']:.0%}", f"{diff:.1e}"]
            verdict = "yes" if r["passed"] else "NO: " + "; ".join(r["failures"])
            lines.append(f"| {r['file']} | {r['precision']} | {' | '.join(figures)} | "
                         f"{tolerance_text(r['precision'])} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SUITES), help="demo,mobilenet")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/edgeprune/arm-parity")
    p.add_argument("--mobilenet-samples", type=int, default=20)
    p.add_argument("--box", type=Path, default=BOX, help="the aarch64 box's cache folder")
    p.add_argument("--box-armhf", type=Path, default=BOX32, help="the armhf box's")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--table", action="store_true",
                   help="only write arm_parity.md again from arm_parity.json")
    args = p.parse_args(argv)
    out_json = args.out / "arm_parity.json"
    if args.table:
        (args.out / "arm_parity.md").write_text(markdown(json.loads(out_json.read_text())))
        return 0
    suites = [s for s in args.only.split(",") if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        p.error(f"unknown suite(s) {sorted(unknown)}: choose from {', '.join(SUITES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    measured = {}
    for name in suites:
        if name == "mobilenet":
            files, batch = mobilenet_files(args.work, args.mobilenet_samples)
        else:
            files, batch = demo_files(args.work)
        if name == "armhf":
            files = [f for f in files if f.suffix == ".tflite"]
        info = (box_info(args.box_armhf, "--arch armhf") if name == "armhf"
                else box_info(args.box))
        measured[name] = measure(name, files, batch, args.work, info)
    # Merged into what the file holds now (another suite may have been written meanwhile).
    results = json.loads(out_json.read_text()) if out_json.is_file() else {"suites": {}}
    results["suites"].update(measured)
    results["date"] = time.strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "arm_parity.md").write_text(markdown(results))
    bad = [r["file"] for s in results["suites"].values() for r in s["rows"] if not r["passed"]]
    print(f"wrote {out_json} and arm_parity.md; " +
          (f"outside tolerance: {', '.join(bad)}" if bad else "every file within tolerance"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
