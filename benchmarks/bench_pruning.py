"""Benchmark of the pruning stage (docs/PRUNING.md, benchmarks/results/pruning.md).

arch:       which torchvision classifiers prune exactly at -40% FLOPs (one child process per
            model, with a time limit), what was protected and why, how long it took;
speed:      real speed-up on this machine, dense vs pruned at 30/50/70% FLOPs, for the demo
            model, ResNet-18 and MobileNetV2, TFLite (XNNPACK) and onnxruntime at 1 and 2
            threads, with and without channel rounding (the x86-64 profile's SIMD width);
latency:    latency-budget mode on the x86-64 (host) profile, calibrated by the dense
            model's measurement: budget vs prediction vs measurement;
reestimate: demo model at -50% FLOPs, Fashion-MNIST test accuracy before any fine-tuning,
            without and with kernel re-estimation.

Usage: python benchmarks/bench_pruning.py [--sections arch,speed,latency,reestimate] [--quick]
       > benchmarks/results/pruning.md
Prints markdown on stdout, progress on stderr. The machine is shared: dense and pruned files
are timed side by side, interleaved, several repeats, medians reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # stdout is the markdown

from edgeprune.console import set_quiet  # noqa: E402
from edgeprune.devices import bench_local, load_target  # noqa: E402
from edgeprune.devices.runner import cpu_model  # noqa: E402
from edgeprune.pruning import LatencyBudget, LatencyModel, prune  # noqa: E402
from edgeprune.spec import InputSpec  # noqa: E402

ARCH = {  # name -> (constructor arguments, input side, what it exercises)
    "resnet18": ({}, 64, "residual"),
    "resnet50": ({}, 64, "bottleneck residual"),
    "resnext50_32x4d": ({}, 64, "grouped conv residual"),
    "wide_resnet50_2": ({}, 64, "wide bottleneck"),
    "vgg11_bn": ({}, 64, "plain chain, large FC"),
    "alexnet": ({}, 64, "plain chain, dropout FC"),
    "mobilenet_v2": ({}, 64, "depthwise, inverted residual"),
    "mobilenet_v3_small": ({}, 64, "depthwise, SE, hardswish"),
    "mobilenet_v3_large": ({}, 64, "depthwise, SE, hardswish"),
    "efficientnet_b0": ({}, 64, "depthwise, SE, SiLU"),
    "efficientnet_v2_s": ({}, 64, "fused-MBConv, SE"),
    "mnasnet0_5": ({}, 64, "depthwise, inverted residual"),
    "shufflenet_v2_x0_5": ({}, 64, "chunk + concat + channel shuffle"),
    "shufflenet_v2_x1_0": ({}, 64, "chunk + concat + channel shuffle"),
    "squeezenet1_0": ({}, 64, "concat (fire), all-conv head"),
    "squeezenet1_1": ({}, 64, "concat (fire), all-conv head"),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 64, "inception concat"),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 96, "inception concat"),
    "densenet121": ({}, 64, "dense concat, BN before conv"),
    "regnet_x_400mf": ({}, 64, "grouped conv residual"),
    "regnet_y_400mf": ({}, 64, "grouped conv, SE"),
    "convnext_tiny": ({}, 64, "LayerNorm, permute, layer scale"),
    "swin_t": ({}, 64, "windowed attention"),
    "vit_b_16": ({"image_size": 64}, 64, "attention, class token"),
}
SPEED_LEVELS = (0.3, 0.5, 0.7)
BENCH = {"warmup": 10, "runs": 50, "min_seconds": 1.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- arch

def arch_one(name: str) -> dict:
    """Prune one torchvision model at -40% FLOPs and check it (run in a child process)."""
    from torchvision import models as tvm

    from edgeprune.pruning.protect import is_exact
    from edgeprune.pruning.surgery import Cut

    torch.set_num_threads(1)
    set_quiet(True)
    kwargs, side, _ = ARCH[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tvm.get_model(name, weights=None, num_classes=10, **kwargs).eval()
    x = torch.zeros(1, 3, side, side)
    t0 = time.perf_counter()
    try:
        r = prune(model, x, flops_reduction=0.4)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}",
                "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for why in r.protected_reasons.values():
        key = "classifier" if why.startswith("classifier") else why.split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    exact = is_exact(model, Cut(r.model, r.kept), x)
    return {"status": "exact" if exact else "NOT exact", "wall_s": wall,
            "flops": r.flops_reduction, "params": r.params_reduction, "reasons": reasons,
            "convs": len(r.channels), "pruned": sum(a < b for b, a in r.channels.values())}


def section_arch(timeout_s: float) -> list[str]:
    lines = ["### Architectures: torchvision classifiers at -40% FLOPs", "",
             "Untrained weights, 10 classes, L1 scores, global ranking, round_to 8, 1 thread; "
             "'exact' = the pruned model computes what the original computes with the removed "
             f"channels zeroed (random inputs). Each model in its own process, limit "
             f"{timeout_s:.0f} s.", "",
             "| model | exercises | input | result | FLOPs removed | params removed | convs "
             "pruned | protected (why) | time (s) |",
             "|---|---|---|---|---:|---:|---:|---|---:|"]
    for name, (_, side, what) in ARCH.items():
        log(f"arch: {name}")
        try:
            proc = subprocess.run([sys.executable, __file__, "--arch-one", name],
                                  capture_output=True, text=True, timeout=timeout_s)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 \
                else {"status": f"crashed ({proc.stderr.strip().splitlines()[-1][:100]})"}
        except subprocess.TimeoutExpired:
            row = {"status": f"over {timeout_s:.0f} s", "wall_s": timeout_s}
        if "flops" in row:
            why = ", ".join(f"{n} {k}" for k, n in row["reasons"].items())
            lines.append(f"| {name} | {what} | {side} | {row['status']} | {row['flops']:.1%} |"
                         f" {row['params']:.1%} | {row['pruned']}/{row['convs']} | {why} | "
                         f"{row['wall_s']:.1f} |")
        else:
            lines.append(f"| {name} | {what} | {side} | {row['status']} | - | - | - | - | "
                         f"{row.get('wall_s', 0):.1f} |")
    return lines


# --------------------------------------------------------------------------------- speed

def speed_models(quick: bool) -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    from torchvision import models as tvm

    from edgeprune.models import create_model, demo_checkpoint_path, load_model

    demo = load_model("demo").model if demo_checkpoint_path().is_file() else \
        create_model("democnn", 1, 10)
    side = 64 if quick else 96
    torch.manual_seed(0)
    models = {"demo (democnn 1x28x28)": (demo.eval(), (1, 28, 28))}
    if not quick:
        models[f"ResNet-18 3x{side}x{side}"] = (tvm.resnet18(num_classes=10).eval(),
                                                 (3, side, side))
    models[f"MobileNetV2 3x{side}x{side}"] = (tvm.mobilenet_v2(num_classes=10).eval(),
                                             (3, side, side))
    return models


def export(model: nn.Module, shape: tuple[int, int, int], folder: Path, stem: str,
           formats: tuple[str, ...] = ("onnx", "tflite")) -> dict[str, Path]:
    """fp32 files through edgeprune's own exporter (onnxsim, litert-torch), verified."""
    from edgeprune.export import export_model

    spec = InputSpec(*shape, (0.5,) * shape[0], (0.25,) * shape[0],
                     tuple(f"c{i}" for i in range(10)))
    samples = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    files = export_model(model, spec, folder, samples, formats=formats, stem=stem)
    return {f.format: f.path for f in files}


def timed(files: dict[str, dict[str, Path]], threads: tuple[int, ...],
          repeats: int) -> dict[tuple[str, str, int], float]:
    """Median p50 over `repeats` rounds; every round times every file once, interleaved."""
    seen: dict[tuple[str, str, int], list[float]] = {}
    for r in range(repeats):
        log(f"  timing round {r + 1}/{repeats}")
        for t in threads:
            for variant, paths in files.items():
                for fmt, path in paths.items():
                    p50 = bench_local(path, threads=t, **BENCH).p50_ms
                    seen.setdefault((variant, fmt, t), []).append(p50)
    return {k: statistics.median(v) for k, v in seen.items()}


def section_speed(quick: bool, repeats: int) -> list[str]:
    simd = load_target("x86-64").simd_width
    levels = (0.5,) if quick else SPEED_LEVELS
    threads = (1, 2)
    lines = ["### Real speed on this machine: dense vs pruned", "",
             f"L1 scores, global ranking; 'rounded' = channel counts multiples of {simd} (the "
             "x86-64 profile's SIMD width), 'not rounded' = round_to 1. Files from edgeprune's "
             "exporter (fp32). p50 latency, median of "
             f"{repeats} interleaved rounds (each >= {BENCH['runs']} runs and >= "
             f"{BENCH['min_seconds']:g} s). speed-up = dense / pruned; FLOPs ratio = dense MACs "
             "/ pruned MACs; efficiency = speed-up / FLOPs ratio (target >= 0.8 with rounding)."
             "", ""]
    for label, (model, shape) in speed_models(quick).items():
        log(f"speed: {label}")
        x = torch.zeros(1, *shape)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = {"dense": export(model, shape, folder, "dense")}
            macs = {"dense": prune(model, x, flops_reduction=0.0).macs_before}
            for level in levels:
                for rounding, round_to in (("rounded", simd), ("not rounded", 1)):
                    key = f"-{level:.0%} {rounding}"
                    r = prune(model, x, flops_reduction=level, round_to=round_to)
                    macs[key] = r.macs_after
                    files[key] = export(r.model, shape, folder, f"p{level * 100:.0f}{round_to}")
            p50 = timed(files, threads, repeats)
        lines += [f"#### {label}: dense {macs['dense'] / 1e6:.1f}M MACs", "",
                  "| variant | MACs | FLOPs ratio | format | threads | p50 (ms) | speed-up | "
                  "efficiency |", "|---|---:|---:|---|---:|---:|---:|---:|"]
        for variant in files:
            ratio = macs["dense"] / macs[variant]
            for fmt in ("tflite", "onnx"):
                for t in threads:
                    ms = p50[(variant, fmt, t)]
                    speedup = p50[("dense", fmt, t)] / ms
                    lines.append(f"| {variant} | {macs[variant] / 1e6:.1f}M | {ratio:.2f} | "
                                 f"{fmt} | {t} | {ms:.3f} | {speedup:.2f} | "
                                 f"{speedup / ratio:.2f} |")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------- latency

def section_latency(quick: bool, repeats: int) -> list[str]:
    target = load_target("x86-64")
    lines = ["### Latency-budget mode on the host profile (x86-64, onnxruntime)", "",
             "The dense model is measured on this machine first; that measurement calibrates "
             "the x86-64 roofline (scale = measured / raw estimate). The pruner then searches "
             "the smallest pruning whose *predicted* latency meets the budget; the pruned file "
             f"is measured afterwards (median p50 of {repeats} runs).", "",
             "| model | threads | dense measured (ms) | raw estimate (ms) | scale | budget (ms) "
             "| predicted (ms) | measured (ms) | measured / budget | FLOPs removed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, (model, shape) in speed_models(quick).items():
        x = torch.zeros(1, *shape)
        for threads in (1, 2):
            log(f"latency: {label}, {threads} threads")
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                dense = export(model, shape, folder, "dense", ("onnx",))["onnx"]
                measured = statistics.median(bench_local(dense, threads=threads, **BENCH).p50_ms
                                             for _ in range(repeats))
                raw = LatencyModel.for_target(target, threads).predict_ms(model, x)
                for share in (0.75, 0.5):
                    budget = LatencyBudget(share * measured, target, threads, measured)
                    r = prune(model, x, goal=budget, round_to=target.simd_width)
                    path = export(r.model, shape, folder, f"b{share * 100:.0f}", ("onnx",))
                    got = statistics.median(bench_local(path["onnx"], threads=threads,
                                                        **BENCH).p50_ms for _ in range(repeats))
                    lat = r.latency
                    lines.append(
                        f"| {label} | {threads} | {measured:.3f} | {raw:.3f} | {lat.scale:.2f} "
                        f"| {budget.ms:.3f} | {lat.predicted_after_ms:.3f} | {got:.3f} | "
                        f"{got / budget.ms:.2f} | {r.flops_reduction:.1%} |")
    return lines


# ---------------------------------------------------------------------------- reestimate

def section_reestimate(quick: bool) -> list[str]:
    from edgeprune.data import iterate_batches, load_dataset
    from edgeprune.models import load_model
    from edgeprune.pruning.bn_recalibration import recalibrate_bn
    from edgeprune.training import evaluate

    data = load_dataset("fashion-mnist")
    model = load_model("demo").model.eval()
    limit = 2000 if quick else None
    batches = list(iterate_batches(data.loader("train", batch_size=64, limit=512, seed=0)))
    x = torch.zeros(1, *data.spec.shape)
    n = limit or len(data.test)

    def top1(m: nn.Module) -> str:
        return f"{evaluate(m, data, limit=limit):.2%}"

    lines = ["### Kernel re-estimation: accuracy before any fine-tuning (demo model)", "",
             f"Fashion-MNIST test set ({n} images), demo checkpoint, -50% FLOPs, round_to 8. "
             "Re-estimation fits on 512 training images (the same ones the data criteria "
             "score on), ridge 1e-3; BN re-calibration (`bn_recalibration.py`, for comparison) "
             "re-estimates BatchNorm statistics on the same 512 images.", "",
             f"Dense top-1: {top1(model)}", "",
             "| criterion | FLOPs removed | pruned as is | + BN re-calibration | + kernel "
             "re-estimation | + both | layers refitted | output error before -> after | "
             "refit time (s) |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for criterion in ("l1", "lrp"):
        log(f"reestimate: {criterion}")
        plain = prune(model, x, criterion=criterion, batches=batches, flops_reduction=0.5)
        t0 = time.perf_counter()
        refit = prune(model, x, criterion=criterion, batches=batches, flops_reduction=0.5,
                      reestimate=True)
        wall = time.perf_counter() - t0
        before = statistics.mean(f.error_before for f in refit.refits)
        after = statistics.mean(f.error_after for f in refit.refits)
        row = [top1(plain.model), top1(recalibrate_bn(copy.deepcopy(plain.model), batches)),
               top1(refit.model), top1(recalibrate_bn(copy.deepcopy(refit.model), batches))]
        lines.append(f"| {criterion} | {plain.flops_reduction:.1%} | {' | '.join(row)} | "
                     f"{len(refit.refits)} | {before:.3f} -> {after:.3f} | {wall:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="arch,speed,latency,reestimate")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer variants")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch-timeout", type=float, default=300)
    parser.add_argument("--arch-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arch_one:
        print(json.dumps(arch_one(args.arch_one)))
        return
    torch.set_num_threads(1)
    set_quiet(True)
    out = [f"## Pruning (measured {time.strftime('%Y-%m-%d')})", "",
           f"Host: {cpu_model()}, {os.cpu_count()} cores visible, Python "
           f"{platform.python_version()}, torch {torch.__version__}; shared machine, so other "
           "jobs add noise. Produced by `python benchmarks/bench_pruning.py`.", ""]
    sections = {"arch": lambda: section_arch(args.arch_timeout),
                "speed": lambda: section_speed(args.quick, args.repeats),
                "latency": lambda: section_latency(args.quick, args.repeats),
                "reestimate": lambda: section_reestimate(args.quick)}
    for name in args.sections.split(","):
        out += sections[name]() + [""]
        print("\n".join(out), flush=True)
        out = []


if __name__ == "__main__":
    main()
