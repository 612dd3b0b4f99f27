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
mobilenet: torchvision's mobilenet_v2 at 3x224x224 trained without a download
(`trained_mobilenet`: random init, one epoch of Adam end to end on 1,200 Fashion-MNIST
training images resized to 224 px and 3 channels, BatchNorm statistics then recomputed on 400
of them; cached in --work as mobilenet-model.pt), so its logits are well separated; exported
fp32, fp16 and int8 PTQ in both formats through `edgeprune.export.api.export_model`, plus an
int8-qat .tflite after one epoch of `edgeprune.training.qat` on 256 training images
(`mobilenet_qat`), on `--mobilenet-samples` test images (each takes seconds under qemu). The
figures of the model (top-1, margins, seconds) are in the suite's "model" entry of
arm_parity.json. An untrained MobileNetV2 is no test: its logits are ~1e-15, every fp16 logit
ties, and its int8 activation scales are so small that TFLite's CONV_2D with a fused RELU6
refuses to prepare (6 / output scale overflows int32, kernel_util.cc `Quantize`); a
random-feature backbone with a linear probe (the previous model, 45.5% top-1) has margins so
small that one rounding difference flips classes.
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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from edgeprune.spec import InputSpec

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
    host_ties: int = 0
    """Samples left out of a reduced precision's comparison: the host's two highest logits
    are equal (a tie at the output's quantization step), so there is no class to reproduce."""

    @property
    def passed(self) -> bool:
        return not self.failures


def tolerance_text(precision: str) -> str:
    """The export verification's tolerance for `precision`, as the table states it."""
    from edgeprune.export.precision import DEFAULT_CHECKS

    check = DEFAULT_CHECKS[precision]
    if check.atol is not None:
        return f"every logit {check.describe()} (host's)"
    return (f"top-1 within {check.max_accuracy_drop:g} point(s), same class on "
            f">= {check.min_agreement:.0%}")


def parity(file: str, precision: str, host: np.ndarray, box: np.ndarray,
           labels: np.ndarray) -> Parity:
    """Whether the box's logits reproduce the host's for one file, judged as the export
    verification judges a file against PyTorch (the host standing for the reference):
    fp32 logits within `Check.bound` and the same class on every decisive sample; fp16 and
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
    diff = float(np.max(np.abs(box.astype(np.float64) - host))) if host.size else 0.0
    if not np.isfinite(box).all():
        diff = float("inf")
    kept = np.ones(n, dtype=bool)
    if check.atol is None and host.ndim == 2 and host.shape[1] > 1:
        best_two = np.sort(host, axis=1)[:, -2:]
        kept = best_two[:, 1] > best_two[:, 0]
    ties = int(n - kept.sum())
    host, box, labels = host[kept], box[kept], labels[kept]
    metrics = compare(host, box, check)
    correct_host = int(np.sum(top1(host) == labels))
    correct_box = int(np.sum(top1(box) == labels))
    n = len(labels)
    failures = [f.replace("with PyTorch", "with the host") for f in metrics.failures]
    if diff == float("inf") and not any("NaN" in f for f in failures):
        failures.insert(0, "outputs contain NaN or inf")  # in a sample left out as a tie
    if check.max_accuracy_drop is not None:
        points = abs(correct_box - correct_host) * 100 / n
        if points > check.max_accuracy_drop:
            failures.append(f"top-1 {correct_box}/{n} in the box vs {correct_host}/{n} here: "
                            f"{points:.2f} points apart, more than "
                            f"{check.max_accuracy_drop:g} allowed")
    same = float(np.mean(top1(box) == top1(host))) if n else 0.0
    return Parity(file, precision, n, correct_host, correct_box, same, diff,
                  tolerance_text(precision), failures, ties)


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


MOBILENET_TRAIN = 1200  # Fashion-MNIST training images, one epoch end to end
MOBILENET_BATCH = 16
MOBILENET_LR = 2e-3  # Adam, cosine to 0 over the epoch
MOBILENET_BN = 400  # training images the BatchNorm statistics are recomputed on afterwards
MOBILENET_QAT = 256  # other training images, one epoch of quantization-aware training
MOBILENET_TEST = 200  # test images PyTorch's top-1 is measured on (the export's eval batch)
MOBILENET_RECIPE = "trained-1"  # a cached model or export of another recipe is made again


def to_224(x: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST images (N, 1, 28, 28), normalized, as MobileNetV2 inputs: bilinear to
    224x224, the one channel repeated to three."""
    import torch.nn.functional as F

    return F.interpolate(x, size=(224, 224), mode="bilinear",
                         align_corners=False).repeat(1, 3, 1, 1)


def mobilenet_spec() -> InputSpec:
    from edgeprune.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
    from edgeprune.spec import InputSpec

    data = load_fashion_mnist(download=False)
    return InputSpec(3, 224, 224, data.spec.mean * 3, data.spec.std * 3,
                     tuple(FASHION_MNIST_LABELS))


def trained_mobilenet(work: Path) -> tuple[torch.nn.Module, InputSpec, dict]:
    """torchvision's MobileNetV2 (10 classes) trained end to end without downloading weights:
    random initialization (seed 0), one epoch of Adam (batch MOBILENET_BATCH, lr MOBILENET_LR,
    cosine) on MOBILENET_TRAIN Fashion-MNIST training images at 224 px, then every
    BatchNorm's running statistics recomputed on MOBILENET_BN of them with the final weights
    (a cumulative average: the momentum-0.1 averages of so short a run lag the weights).
    Cached in `work` (mobilenet-model.pt and .json): a rerun loads it. Returns
    (model, spec, facts)."""
    import torch
    import torchvision
    from torch import nn

    from edgeprune.data.fashion_mnist import load_fashion_mnist
    from edgeprune.jobs.loading import take
    from edgeprune.pruning.bn_recalibration import recalibrate_bn

    torch.set_num_threads(2)
    spec = mobilenet_spec()
    weights, facts_file = work / "mobilenet-model.pt", work / "mobilenet-model.json"
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    if weights.is_file() and facts_file.is_file():
        facts = json.loads(facts_file.read_text())
        if facts.get("recipe") == MOBILENET_RECIPE:
            model.load_state_dict(torch.load(weights, weights_only=True))
            print(f"mobilenet: cached {weights} {facts}", flush=True)
            return model.eval(), spec, facts
    t0 = time.perf_counter()
    data = load_fashion_mnist(download=False)
    x_train, y_train = take(data, "train", MOBILENET_TRAIN, 0)
    x_test, y_test = take(data, "test", MOBILENET_TEST, 0)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x_train), generator=g)
    steps = -(-len(x_train) // MOBILENET_BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=MOBILENET_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    losses = []
    for step in range(steps):
        idx = order[step * MOBILENET_BATCH:(step + 1) * MOBILENET_BATCH]
        loss = nn.functional.cross_entropy(model(to_224(x_train[idx])), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            print(f"mobilenet: step {step + 1}/{steps} loss {loss.item():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    recalibrate_bn(model, ((to_224(x_train[order[i:i + 50]]),)
                           for i in range(0, MOBILENET_BN, 50)))
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(to_224(x_test[i:i + 50]))
                            for i in range(0, len(x_test), 50)])
    top2 = logits.topk(2, dim=1).values
    facts = {"recipe": MOBILENET_RECIPE, "train_images": len(x_train), "epochs": 1,
             "batch": MOBILENET_BATCH, "lr": MOBILENET_LR, "bn_images": MOBILENET_BN,
             "test_images": len(x_test),
             "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 3),
             "test_top1": round(float((logits.argmax(1) == y_test).float().mean()), 4),
             "logit_abs_mean": round(float(logits.abs().mean()), 3),
             "median_margin": round(float((top2[:, 0] - top2[:, 1]).median()), 3),
             "train_s": round(train_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"mobilenet: {facts}", flush=True)
    torch.save(model.state_dict(), weights)
    facts_file.write_text(json.dumps(facts, indent=1) + "\n")
    return model, spec, facts


def mobilenet_qat(model: torch.nn.Module, spec: InputSpec, x_test: torch.Tensor,
                  y_test: torch.Tensor, out: Path) -> dict:
    """One epoch of quantization-aware training (`edgeprune.training.qat`, SGD lr 1e-3,
    batch 16, no teacher) of the trained model on MOBILENET_QAT training images (another
    seeded draw than the training's),
    exported `int8-qat` (.tflite) into `out`; its facts."""
    from torch.utils.data import TensorDataset

    from edgeprune.data.bundle import DataBundle
    from edgeprune.data.fashion_mnist import load_fashion_mnist
    from edgeprune.export.api import export_model
    from edgeprune.export.base import ExportOptions
    from edgeprune.jobs.loading import take
    from edgeprune.training.loop import TrainConfig
    from edgeprune.training.qat import train_qat

    t0 = time.perf_counter()
    x, y = take(load_fashion_mnist(download=False), "train", MOBILENET_QAT, 2)
    data = DataBundle("fashion-mnist-224", TensorDataset(to_224(x), y),
                      TensorDataset(x_test, y_test), spec)
    result = train_qat(model, data, TrainConfig(epochs=1, lr=1e-3, batch_size=16,
                                                augment=False, seed=0, monitor=False),
                       evaluate=False)
    export_model(result.model, spec, out, x_test[:32], formats=["tflite"],
                 stem="mobilenet_v2", verify=False, precisions=["int8-qat"],
                 eval_samples=(x_test, y_test), options=ExportOptions(quantizer=result.quantizer))
    return {"qat_images": MOBILENET_QAT, "qat_epochs": 1, "qat_lr": 1e-3,
            "qat_s": round(time.perf_counter() - t0, 1)}


def mobilenet_files(work: Path, samples: int) -> tuple[list[Path], Path]:
    """MobileNetV2 at 3x224x224 (`trained_mobilenet`) exported through edgeprune's exporters in
    fp32, fp16 and int8 PTQ (64 calibration images), .tflite and .onnx, and int8-qat .tflite
    (`mobilenet_qat`), each file's top-1 measured on the MOBILENET_TEST images; (files, eval
    batch of `samples` other test images)."""
    out, qat = work / "mobilenet", work / "mobilenet-qat"
    batch = work / f"mobilenet.samples-{samples}.npz"
    made = out / "model.json"
    if not made.is_file() or json.loads(made.read_text()).get("recipe") != MOBILENET_RECIPE:
        from edgeprune.data.fashion_mnist import load_fashion_mnist
        from edgeprune.export.api import export_model
        from edgeprune.jobs.loading import take

        model, spec, facts = trained_mobilenet(work)
        data = load_fashion_mnist(download=False)
        x_cal, _ = take(data, "train", 64, 1)  # another seeded draw than the training's
        x_test, y_test = take(data, "test", MOBILENET_TEST, 0)
        x_test = to_224(x_test)
        export_model(model, spec, out, x_test[:32], formats=["tflite", "onnx"],
                     stem="mobilenet_v2", verify=False, precisions=["fp32", "fp16", "int8"],
                     calibration=to_224(x_cal), eval_samples=(x_test, y_test),
                     summary={"made_by": "benchmarks/bench_arm_box.py trained_mobilenet",
                              **facts})
        facts |= mobilenet_qat(model, spec, x_test, y_test, qat)
        made.write_text(json.dumps(facts, indent=1) + "\n")
    if not batch.is_file():
        from edgeprune.data.fashion_mnist import load_fashion_mnist
        from edgeprune.devices import write_eval_samples
        from edgeprune.jobs.loading import take

        x, y = take(load_fashion_mnist(download=False), "test", samples, 1)
        write_eval_samples(batch, to_224(x).numpy(), y.numpy())
    files = sorted(out.glob("*.tflite")) + sorted(out.glob("*.onnx")) + sorted(qat.glob("*.tflite"))
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


BOX_COMMANDS = {"demo": "tools/arm_box.sh", "mobilenet": "tools/arm_box.sh",
                "armhf": "tools/arm_box.sh --arch armhf"}


def command(name: str, mobilenet_samples: int = 20) -> str:
    """The command line that measures suite `name` (what the table's header quotes)."""
    extra = (f" --mobilenet-samples {mobilenet_samples}"
             if name == "mobilenet" and mobilenet_samples != 20 else "")
    return f"python benchmarks/bench_arm_box.py --only {name}{extra}"


def mobilenet_model(work: Path) -> dict:
    """How the MobileNetV2 suite's model was made, with its figures (model.json)."""
    facts = json.loads((work / "mobilenet" / "model.json").read_text())
    return facts | {"how": (
        f"torchvision mobilenet_v2 (10 classes), random init (seed 0), trained end to end "
        f"{facts['epochs']} epoch on {facts['train_images']} Fashion-MNIST training images "
        f"(224 px, 3 channels; Adam lr {facts['lr']:g}, batch {facts['batch']}, cosine), "
        f"BatchNorm running statistics then recomputed on {facts['bn_images']} of them: "
        f"PyTorch top-1 {facts['test_top1']:.1%} on {facts['test_images']} test images "
        f"(chance 10%), mean abs logit {facts['logit_abs_mean']}, median top-1/top-2 margin "
        f"{facts['median_margin']}; fp32, fp16 and int8 PTQ (64 calibration images) through "
        f"edgeprune.export.api.export_model, and int8-qat (.tflite) after {facts['qat_epochs']} "
        f"epoch of quantization-aware training (edgeprune.training.qat, SGD lr "
        f"{facts['qat_lr']:g}) on {facts['qat_images']} training images.")}


def markdown(results: dict) -> str:
    lines = ["# Numerical parity on ARM (the emulated boxes against this host)", "",
             "Made one suite at a time, each run merging its suite into arm_parity.json "
             "(`python benchmarks/bench_arm_box.py --table` writes this file again from it):", ""]
    for name, suite in results["suites"].items():
        lines.append(f"- {name} ({suite.get('date', results['date'])}): "
                     f"`{BOX_COMMANDS[name]} && {suite.get('command', command(name))}`")
    lines.append("")
    for name, suite in results["suites"].items():
        box, host = suite["box"], suite["host"]
        runtimes = sorted(set(box["runtimes"].values()))
        model = suite.get("model")
        lines += [f"## {name}", ""]
        if model:
            lines += [f"Model: {model['how']}", ""]
        lines += [f"{suite['samples']} eval images ({Path(suite['eval_batch']).name}); box: "
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
                ties = r.get("host_ties", 0)
                left_out = f" ({ties} tied on the host, left out)" if ties else ""
                figures = [f"{r['correct_host']}/{n}", f"{r['correct_box']}/{n}",
                           f"{r['same_class']:.0%}{left_out}", f"{diff:.1e}"]
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
        measured[name] = measure(name, files, batch, args.work, info) | {
            "date": time.strftime("%Y-%m-%d"),
            "command": command(name, args.mobilenet_samples)}
        if name == "mobilenet":
            measured[name]["model"] = mobilenet_model(args.work)
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
