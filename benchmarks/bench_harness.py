"""Benchmark of the device harness itself (docs/BENCHMARKS.md, "Device harness").

(a) runner overhead: what the timer around each inference costs, against a tiny model's p50;
(b) spread: coefficient of variation of p50 over 5 repeated runs of the demo model files;
(c) estimate vs host measurement for the demo model and torchvision MobileNetV2 (224x224) on
    the x86-64 profile, at this machine's thread count.

Usage: python benchmarks/bench_harness.py > benchmarks/results/harness.md   (a few minutes)
Prints markdown on stdout; progress on stderr.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeprune.devices import bench_local, estimate_latency, load_target
from edgeprune.devices.estimate import count_model
from edgeprune.devices.runner import cpu_model, time_ms

REPEATS = 5
BENCH = {"warmup": 10, "runs": 50, "min_seconds": 1.0}  # the CLI's defaults


os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # stdout is the markdown


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_both(model: torch.nn.Module, shape: tuple[int, ...], folder: Path,
                stem: str) -> dict[str, Path]:
    """fp32 .onnx (torch.onnx dynamo export) and .tflite (litert-torch) of `model`."""
    import litert_torch

    x = torch.randn(1, *shape)
    paths = {"onnx": folder / f"{stem}.onnx", "tflite": folder / f"{stem}.tflite"}
    torch.onnx.export(model, (x,), str(paths["onnx"]), dynamo=True, external_data=False,
                      verbose=False)
    litert_torch.convert(model, (x,)).export(str(paths["tflite"]))
    return paths


def demo_model() -> tuple[torch.nn.Module, str]:
    from edgeprune.models import create_model, demo_checkpoint_path, load_model

    if demo_checkpoint_path().is_file():
        return load_model("demo").model.eval(), "demo checkpoint (democnn, 1x28x28)"
    return create_model("democnn", 1, 10).eval(), "democnn, 1x28x28 (untrained weights)"


def timer_overhead() -> dict[str, float]:
    """ns per timed no-op through the runner's own `time_ms`, and per bare perf_counter_ns
    pair, medians over 200k calls."""
    samples = [time_ms(lambda: None) * 1e6 for _ in range(200_000)]
    bare = []
    for _ in range(200_000):
        t0 = time.perf_counter_ns()
        bare.append(time.perf_counter_ns() - t0)
    return {"time_ms_ns": statistics.median(samples), "time_ms_p99_ns":
            float(np.percentile(samples, 99)), "bare_ns": statistics.median(bare)}


def section_overhead(folder: Path) -> list[str]:
    log("(a) runner overhead")
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 4)).eval()
    paths = export_both(tiny, (3, 16, 16), folder, "tiny")
    timer = timer_overhead()
    lines = ["### (a) Runner overhead: timer cost vs a tiny model", "",
             f"Timer around one inference (the runner's `time_ms`: two `perf_counter_ns` calls, "
             f"a subtraction and a call): median {timer['time_ms_ns']:.0f} ns, p99 "
             f"{timer['time_ms_p99_ns']:.0f} ns; a bare `perf_counter_ns` pair: "
             f"{timer['bare_ns']:.0f} ns. Tiny model: conv 3->8 + linear on 3x16x16, 1 thread.",
             "", "| format | runtime | p50 (ms) | timer / p50 |", "|---|---|---:|---:|"]
    for fmt, path in paths.items():
        r = bench_local(path, threads=1, **BENCH)
        share = timer["time_ms_ns"] / (r.p50_ms * 1e6)
        lines.append(f"| {fmt} | {r.runtime} {r.runtime_version} | {r.p50_ms:.4f} | "
                     f"{share * 100:.2f}% |")
    return lines


def section_spread(paths: dict[str, Path], label: str) -> list[str]:
    log("(b) spread")
    lines = [f"### (b) Spread: p50 over {REPEATS} repeated runs ({label})", "",
             f"Each run is a fresh runner process: warm-up {BENCH['warmup']}, >= {BENCH['runs']} "
             f"runs and >= {BENCH['min_seconds']:g} s.", "",
             "| format | threads | p50 per run (ms) | mean p50 (ms) | CV of p50 |",
             "|---|---:|---|---:|---:|"]
    for threads in sorted({1, min(2, os.cpu_count() or 1)}):
        for fmt, path in paths.items():
            p50 = [bench_local(path, threads=threads, **BENCH).p50_ms for _ in range(REPEATS)]
            cv = statistics.stdev(p50) / statistics.mean(p50)
            lines.append(f"| {fmt} | {threads} | {', '.join(f'{v:.4f}' for v in p50)} | "
                         f"{statistics.mean(p50):.4f} | {cv * 100:.1f}% |")
    return lines


def section_estimates(models: dict[str, dict[str, Path]]) -> list[str]:
    log("(c) estimate vs host")
    target = load_target("x86-64")
    threads = min(target.cores, os.cpu_count() or 1)
    lines = ["### (c) Estimate vs host measurement, x86-64 profile", "",
             f"Estimate: x86-64 profile ({target.peak_gflops:g} GFLOPS peak over "
             f"{target.cores} cores, {target.mem_bandwidth_gbs:g} GB/s, efficiency "
             f"{target.efficiency['fp32']} borrowed from the rpi4 calibration) scaled to "
             f"{threads} threads; host: measured here with {threads} threads.", "",
             "| model | format | MACs | estimate (ms) | bound | host p50 (ms) | host / estimate |",
             "|---|---|---:|---:|---|---:|---:|"]
    for name, paths in models.items():
        for fmt, path in paths.items():
            cost = count_model(path)
            est = estimate_latency(cost, target, threads)
            host = bench_local(path, threads=threads, **BENCH)
            lines.append(f"| {name} | {fmt} | {cost.macs / 1e6:.2f}M | {est.latency_ms:.3f} | "
                         f"{est.bound} | {host.p50_ms:.3f} | "
                         f"{host.p50_ms / est.latency_ms:.2f} |")
    return lines


def main() -> None:
    import torchvision

    header = [f"## Device harness (measured {time.strftime('%Y-%m-%d')})", "",
              f"Host: {cpu_model()}, {os.cpu_count()} cores visible, Python "
              f"{platform.python_version()}, {platform.machine()}; shared machine, so other "
              "jobs may add noise. Produced by `python benchmarks/bench_harness.py`.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        demo, demo_label = demo_model()
        demo_paths = export_both(demo, (1, 28, 28), folder, "demo")
        log("exporting MobileNetV2")
        mnv2 = torchvision.models.mobilenet_v2().eval()
        mnv2_paths = export_both(mnv2, (3, 224, 224), folder, "mobilenet_v2")
        out = header + section_overhead(folder) + [""] + section_spread(demo_paths, demo_label)
        out += [""] + section_estimates({"demo": demo_paths, "MobileNetV2 224": mnv2_paths})
    print("\n".join(out))


if __name__ == "__main__":
    main()
