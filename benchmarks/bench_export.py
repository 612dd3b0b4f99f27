"""Export the demo model, dense and pruned, to every format and precision and print the
markdown table of docs/EXPORT.md / docs/BENCHMARKS.md: file size, parity with PyTorch,
top-1 accuracy on the full Fashion-MNIST test set, host latency and export wall time.

    python benchmarks/bench_export.py [--out benchmarks/results/export.md] [--eval-limit N]

Each model is exported twice: once as `edgeprune export` does it by default minus the accuracy
pass (32-sample parity check only), which gives the export wall time; once with the whole test
set as labelled evaluation samples (verify=False, so a file that misses a threshold is still
shown, marked as failing), which gives the accuracy figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeprune.data import iterate_batches, load_dataset
from edgeprune.devices.bench import bench_local
from edgeprune.export import PRECISIONS, ExportResult, export_model
from edgeprune.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe_host  # noqa: E402

FORMATS = ("onnx", "tflite")


def take(bundle, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in iterate_batches(bundle.loader(split, batch_size=1000, limit=n)):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def pruned_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The demo model pruned to half its FLOPs by L1 norm, without fine-tuning."""
    from edgeprune.pruning import prune

    return prune(copy.deepcopy(model), torch.zeros(1, 1, 28, 28), criterion="l1",
                 flops_reduction=0.5, round_to=8).model


def export_twice(model, spec, out: Path, tag: str, samples, calibration,
                 eval_set) -> tuple[list[ExportResult], dict[tuple[str, str], float]]:
    """(results with accuracy on the eval set, export wall time per (format, precision))."""
    timed = export_model(model, spec, out / "timed", samples, formats=FORMATS, stem=tag,
                         precisions=PRECISIONS, calibration=calibration)
    wall = {(r.format, r.precision): r.wall_s for r in timed}
    results = export_model(model, spec, out / "eval", samples, formats=FORMATS, stem=tag,
                           precisions=PRECISIONS, calibration=calibration,
                           eval_samples=eval_set, verify=False)
    return results, wall


def rows(tag: str, results: list[ExportResult], wall: dict) -> list[str]:
    fp32_size = {r.format: r.size_bytes for r in results if r.precision == "fp32"}
    lines = []
    for r in results:
        p50 = bench_local(r.path, threads=1).p50_ms
        drop = (r.accuracy - r.reference_accuracy) * 100
        lines.append(
            f"| {tag} | {r.format} | {r.precision} | {r.size_bytes / 1024:,.0f} KiB | "
            f"{fp32_size[r.format] / r.size_bytes:.2f}x | {r.max_abs_diff:.1e} | "
            f"{r.top1_agreement:.1%} | {r.accuracy:.2%} | {drop:+.2f} | {p50:.3f} | "
            f"{wall[(r.format, r.precision)]:.1f} | {'yes' if r.verified else '**no**'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--eval-limit", type=int, help="test images (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model("demo")
    data = load_dataset("fashion-mnist")
    eval_set = take(data, "test", args.eval_limit)
    samples = eval_set[0][:32]
    calibration = take(data, "train", 512)[0]
    dense = loaded.model.eval()
    models = {"dense": dense, "pruned": pruned_copy(dense).eval()}
    t0 = time.perf_counter()
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for tag, model in models.items():
            results, wall = export_twice(model, loaded.spec, Path(tmp), tag, samples,
                                         calibration, eval_set)
            lines += rows(tag, results, wall)
    params = {t: sum(p.numel() for p in m.parameters()) for t, m in models.items()}
    print_report(lines, params, len(eval_set[1]), time.perf_counter() - t0, args.out)


def print_report(lines: list[str], params: dict[str, int], n_eval: int, wall: float,
                 out: Path | None) -> None:
    import ai_edge_litert
    import onnxruntime

    text = "\n".join([
        f"Demo model (democnn, Fashion-MNIST), dense ({params['dense']:,} params) and pruned "
        f"to half its FLOPs by L1 norm without fine-tuning ({params['pruned']:,} params). "
        f"Accuracy: top-1 of the file on the {n_eval:,} Fashion-MNIST test images and its "
        "difference to the PyTorch model's, in points. Parity: max |logit difference| and "
        "top-1 agreement with PyTorch on 32 test images. Latency: p50 of batch-1 runs, one "
        f"thread, on the host ({describe_host()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end; onnxruntime {onnxruntime.__version__}, "
        f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}). Export time: "
        "conversion (shared by a format's precisions) + quantization + 32-sample check. "
        f"Whole benchmark {wall / 60:.1f} min.",
        "",
        "| model | format | precision | size | vs fp32 | max abs diff | top-1 agree | "
        "top-1 | vs PyTorch | p50 ms | export s | passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *lines, ""])
    sys.stdout.write(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
