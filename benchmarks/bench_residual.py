"""Residual networks: the residual stream pruned with every layer that writes to it
(`--residual-stream prune`, the default) against the stream kept whole and only the convs
inside the blocks pruned (`--residual-stream keep`, the physical counterpart of the LRP
authors' per-conv masks), at the same FLOPs reduction, on Fashion-MNIST ResNets.

    python benchmarks/bench_residual.py --model benchmarks/models/resnet20_fashion_mnist.pt \\
        [--criterion lrp] [--flops 0.5] [--finetune-epochs 1]

For each mode (one criterion scoring, shared): top-1 with no fine-tuning (raw; after BatchNorm
re-calibration on 2000 training images; after kernel re-estimation on the 500 reference images
and then BN re-calibration: the retrain-free recovery), then after --finetune-epochs of
fine-tuning (distillation from the dense model, as `compress` does, from the BN-recalibrated
model). Latency: the dense and both pruned models exported to fp32 TFLite and timed with
`edgeprune bench --threads 1` (interleaved rounds in one process, this host). Every result is
merged into --json as soon as it exists, so a rerun resumes; the markdown goes to --md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_file import ResultsFile

from edgeprune.console import set_quiet
from edgeprune.criteria import get_criterion
from edgeprune.data import load_dataset
from edgeprune.export import export_model
from edgeprune.models import load_model
from edgeprune.pruning import prune
from edgeprune.pruning.bn_recalibration import recalibrate_bn
from edgeprune.training import TrainConfig, evaluate, train

MODES = ("prune", "keep")


def latency(models: dict[str, torch.nn.Module], spec, samples: torch.Tensor,
            rounds: int) -> dict[str, dict]:
    """fp32 TFLite p50 of each model, timed interleaved by `edgeprune bench` (1 thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, model in models.items():
            result = export_model(model, spec, Path(tmp) / name, samples, formats=("tflite",),
                                  stem=name)
            paths.append(str(result[0].path))
        out = Path(tmp) / "bench.json"
        subprocess.run(["edgeprune", "bench", *paths, "--threads", "1", "--rounds",
                        str(rounds), "--runs", "200", "--min-seconds", "2", "--json", str(out),
                        "--quiet"], check=True)
        rows = json.loads(out.read_text())["rows"]
    return {name: {"p50_ms": row["measurement"]["latency_ms"]["p50"],
                   "speedup": 1 / row["ratios"]["p50"],  # median of the per-round ratios
                   "speedup_rounds": [1 / r for r in reversed(row["ratios"]["p50_spread"])],
                   "runtime": f"{row['measurement']['runtime']} "
                              f"{row['measurement']['runtime_version']}"}
            for name, row in zip(models, rows, strict=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--criterion", default="lrp")
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--score-samples", type=int, default=500)
    p.add_argument("--recal-samples", type=int, default=2000)
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/residual.json")
    p.add_argument("--md", default="benchmarks/results/residual.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    results = ResultsFile(Path(args.json))
    tag = Path(args.model).stem
    data = load_dataset("fashion-mnist")
    dense = load_model(args.model, in_channels=1, num_classes=10).model.eval()
    reference = data.reference(args.score_samples, seed=0)
    recal = data.reference(args.recal_samples, seed=1, batch_size=128)
    example = torch.zeros(1, *data.spec.shape)
    if f"{tag}/dense" not in results.data:
        results.save(f"{tag}/dense", {"top1": evaluate(dense, data)})
    t0 = time.perf_counter()
    scores = get_criterion(args.criterion).score(copy.deepcopy(dense), reference)
    score_s = time.perf_counter() - t0
    pruned = {}
    for mode in MODES:
        key = f"{tag}/{args.criterion}/{args.flops}/r{args.round_to}/{mode}"

        def cut(reestimate: bool, mode: str = mode):
            return prune(dense, example, scores=scores, batches=reference,
                         flops_reduction=args.flops, round_to=args.round_to,
                         global_ranking=False, residual_stream=mode, reestimate=reestimate)

        result = cut(False)
        model = result.model
        if f"{key}/no-ft" not in results.data:
            raw = evaluate(model, data)
            recalibrate_bn(model, recal)
            refit = cut(True).model
            recalibrate_bn(refit, recal)
            results.save(f"{key}/no-ft", {
                "raw": raw, "recal": evaluate(model, data), "reestimate": evaluate(refit, data),
                "flops_removed": result.flops_reduction, "params": result.params_after,
                "score_s": score_s})
        else:
            recalibrate_bn(model, recal)
        pruned[mode] = model
        if f"{key}/ft" not in results.data and args.finetune_epochs > 0:
            tuned = copy.deepcopy(model)
            t0 = time.perf_counter()
            train(tuned, data, TrainConfig(epochs=args.finetune_epochs, lr=args.lr,
                                           batch_size=128, seed=0), teacher=dense,
                  description=f"fine-tune {mode}")
            results.save(f"{key}/ft", {"top1": evaluate(tuned, data),
                                       "epochs": args.finetune_epochs,
                                       "wall_s": time.perf_counter() - t0})
    lkey = f"{tag}/{args.criterion}/{args.flops}/r{args.round_to}/latency"
    if lkey not in results.data:
        samples = next(iter(reference))[0][:8]
        results.save(lkey, latency({"dense": dense, **pruned}, data.spec, samples,
                                   args.rounds))
    command = "python benchmarks/bench_residual.py " + " ".join(sys.argv[1:])
    commands = results.data.get("commands", [])
    if command not in commands:
        results.save("commands", [*commands, command])
    Path(args.md).write_text(markdown(results.data))
    print(f"wrote {args.md}")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(r: dict) -> str:
    lines = ["# Residual stream: pruned with its writers, or kept whole", "",
             f"Host: {platform.machine()}, torch {torch.__version__}, 1 thread. Fashion-MNIST, "
             "top-1 on the 10k test images; uniform per-layer ratio (compress's default: the "
             "smallest ratio that meets the FLOPs goal once channels are rounded); BN "
             "re-calibration on 2000 training images; kernel "
             "re-estimation on the 500 reference images; fine-tuning: distillation from the "
             "dense model, lr 0.01. Latency: fp32 TFLite, `edgeprune bench --threads 1`, the "
             "three files interleaved in 20 rounds; speedup over dense with its lowest and "
             "highest round.", "", "Commands:", "",
             *[f"    {c}" for c in r.get("commands", [])], "",
             "| model (dense top-1) | criterion, goal, rounding | stream | FLOPs removed | params "
             "| raw | BN-recal | re-est. + BN-recal | 1 epoch FT | fp32 p50 ms | speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(k for k in r if k.endswith("/no-ft")):
        tag, crit, flops, rounding, mode, _ = key.split("/")
        base = f"{tag}/{crit}/{flops}/{rounding}"
        no_ft, ft = r[key], r.get(f"{base}/{mode}/ft", {})
        lat = r.get(f"{base}/latency", {}).get(mode)
        low, high = lat["speedup_rounds"] if lat else (0, 0)
        p50, speed = (f"{lat['p50_ms']:.3f}", f"{lat['speedup']:.2f}x ({low:.2f}-{high:.2f})") \
            if lat else ("–", "–")
        cells = [f"{tag} ({_pct(r.get(f'{tag}/dense', {}).get('top1'))})",
                 f"{crit}, -{round(float(flops) * 100)}%, round to {rounding[1:]}", mode,
                 f"{_pct(no_ft['flops_removed'])}%", f"{no_ft['params'] / 1e3:.0f}k",
                 _pct(no_ft["raw"]), _pct(no_ft["recal"]), _pct(no_ft["reestimate"]),
                 _pct(ft.get("top1")), p50, speed]
        lines.append("| " + " | ".join(cells) + " |")
    for key in sorted(k for k in r if k.endswith("/latency")):
        tag, crit, flops, rounding, _ = key.split("/")
        lines.append(f"\nDense {tag}, timed with the {crit} -{round(float(flops) * 100)}% "
                     f"{rounding} files: fp32 TFLite p50 {r[key]['dense']['p50_ms']:.3f} ms "
                     f"({r[key]['dense']['runtime']}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
