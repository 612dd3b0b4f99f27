"""Per-layer allocation at one cut: compress's uniform ratio against a NetAdapt-style greedy
allocation, on the demo model and full Fashion-MNIST, each fine-tuned as a level-search trial.

    python benchmarks/bench_allocation.py [--arms uniform,greedy] [--seeds 0] [--threads 1]

- uniform: the lrp scores of the dense model (500 training images), one ratio in every layer,
  channels rounded to 8 (the rpi4 profile), FlopsReduction(0.5) as compress's first level
  asks: -62.6% of the MACs.
- progressive: the level search's path to the same cut when it keeps a shallower level:
  levels 25% and 37.5% first (each pruned from the previous fine-tuned model with the
  channels' carried scores, each fine-tuned as a trial), then 50% of the dense FLOPs from
  37.5%'s model (iterative pruning, Han et al. 2015; the search cuts a deeper level from its
  deepest accepted model the same way).
- widths: the conv widths given by `--widths` (one per conv layer, lowest lrp scores removed),
  e.g. the uniform share of channels rounded to the nearest multiple of 8 instead of down
  (Torch-Pruning's `round_to` floors the kept count, so a uniform ratio strips narrow layers
  first: level 50% keeps 16 of 32 channels but 88 of 128).
- greedy: from the dense model, each step removes 8 channels (the lowest lrp scores) from the
  one conv layer where that costs the least validation top-1 per MAC removed, judged after
  BatchNorm re-calibration on 1,024 training images and on 2,000 validation images, without
  fine-tuning (NetAdapt's loop, Yang et al. 2018, without its per-proposal short-term
  fine-tuning, which on this host costs minutes per proposal); it stops within one point of
  the uniform cut.

Both are then fine-tuned for 2 epochs with distillation from the dense model (compress's
defaults: SGD one-cycle, lr 0.01, batch 128) and measured in PyTorch (fp32) on the held-out
split the way compress splits it: a validation half (5,000 images, decisions) and a test half
(5,000 images, the report). Results: benchmarks/results/allocation.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_file import ResultsFile  # noqa: E402

RESULTS = HERE / "results" / "allocation.json"
ROUND_TO = 8
LEVEL = 0.5


def setup() -> tuple:
    """The dense demo model, full Fashion-MNIST split as compress splits it, lrp scores."""
    from edgeprune.criteria import get_criterion
    from edgeprune.data import load_dataset
    from edgeprune.data.bundle import held_out_size
    from edgeprune.models.loader import load_model

    dense = load_model("demo").model.eval()
    data = load_dataset("fashion-mnist")
    data = data.with_validation(held_out_size(len(data.test)), 0, "test")
    scores = get_criterion("lrp").score(copy.deepcopy(dense),
                                        data.reference(500, seed=0, batch_size=64))
    return dense, data, scores


def uniform(dense, data, scores, x) -> torch.nn.Module:
    from edgeprune.pruning import FlopsReduction, prune

    return prune(dense, x, scores=scores, round_to=ROUND_TO, global_ranking=False,
                 goal=FlopsReduction(LEVEL)).model


PROGRESSIVE_LEVELS = (0.25, 0.375)
"""The shallower levels the progressive arm fine-tunes before it cuts LEVEL (the default
run's accepted trials on full Fashion-MNIST)."""


def progressive(dense, data, scores, x, fine_tune) -> torch.nn.Module:
    """LEVEL of the dense FLOPs reached through PROGRESSIVE_LEVELS, as the level search prunes
    a deeper trial from its parent: each step cut from the previous fine-tuned model with the
    scores of the channels it kept (`fine_tune(model, description)` trains in place); the
    last cut is returned before its own fine-tuning."""
    from edgeprune.pruning import FlopsReduction, prune
    from edgeprune.pruning.search import count

    dense_macs = count(dense, x)[0]
    model, reached = copy.deepcopy(dense), 0.0
    for level in (*PROGRESSIVE_LEVELS, LEVEL):
        result = prune(model, x, scores=scores, round_to=ROUND_TO, global_ranking=False,
                       goal=FlopsReduction(1 - (1 - level) / (1 - reached)))
        model = result.model
        scores = {n: s[result.kept[n]] if n in result.kept else s for n, s in scores.items()}
        reached = 1 - count(model, x)[0] / dense_macs
        print(f"progressive: level {level:.1%} -> -{reached:.1%} MACs", flush=True)
        if level != LEVEL:
            fine_tune(model, f"fine-tuning progressive level {level:.1%}")
    return model


def given_widths(dense, scores, x, widths: list[int]) -> torch.nn.Module:
    """The dense model cut to `widths` output channels per conv layer (in order), keeping the
    channels with the highest scores."""
    from edgeprune.pruning import prune
    from edgeprune.pruning.goals import LayerRatios

    names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(widths) != len(names):
        raise SystemExit(f"--widths needs {len(names)} numbers, one per conv layer")
    ratios = {n: 1 - w / dense.get_submodule(n).out_channels
              for n, w in zip(names, widths, strict=True)
              if w < dense.get_submodule(n).out_channels}
    if not ratios:
        return copy.deepcopy(dense)
    return prune(dense, x, scores=scores, round_to=1, global_ranking=False,
                 goal=LayerRatios(ratios)).model


def greedy(dense, data, scores, x, target: float) -> torch.nn.Module:
    """NetAdapt's loop without short-term fine-tuning: 8 channels at a time from the layer
    where they cost the least validation top-1 per MAC, until within 0.01 of `target`."""
    from edgeprune.pruning.bn_recalibration import recalibrate_bn
    from edgeprune.pruning.search import count
    from edgeprune.training import evaluate

    names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)]
    keep = {n: dense.get_submodule(n).out_channels for n in names}
    bn_batches = data.reference(1024, seed=1, batch_size=128)
    dense_macs = count(dense, x)[0]

    def build(counts: dict[str, int]) -> torch.nn.Module:
        return given_widths(dense, scores, x, [counts[n] for n in names])

    macs, accuracy = dense_macs, evaluate(dense, data, split="val", limit=2000)
    while 1 - macs / dense_macs < target - 0.01:
        best = None
        for n in names:
            if keep[n] - ROUND_TO < ROUND_TO:
                continue
            model = build(keep | {n: keep[n] - ROUND_TO})
            after = count(model, x)[0]
            if 1 - after / dense_macs > target + 0.01:
                continue
            recalibrate_bn(model, bn_batches)
            acc = evaluate(model, data, split="val", limit=2000, description=f"proposal {n}")
            cost = (accuracy - acc) / max(macs - after, 1)
            if best is None or cost < best[0]:
                best = (cost, n, acc, after)
        if best is None:
            break
        _, n, accuracy, macs = best
        keep[n] -= ROUND_TO
        print(f"greedy: {n} -> {keep[n]} channels, MACs -{1 - macs / dense_macs:.1%}, "
              f"validation top-1 {accuracy:.2%} (no fine-tuning)", flush=True)
    return build(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="uniform,greedy",
                        help="comma-separated: uniform, progressive, widths, greedy")
    parser.add_argument("--widths", default="24,24,40,40,80,80",
                        help="the widths arm's conv widths, one per conv layer")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate "
                        "(compress's --lr); rows at another rate are keyed with it")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--kd-alpha", type=float, default=0.7)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="JSON file the rows are merged into (one per host keeps hosts "
                             "apart)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from edgeprune.pruning.search import count
    from edgeprune.training import TrainConfig, evaluate, train

    dense, data, scores = setup()
    x = torch.zeros(1, *data.spec.shape)
    dense_macs = count(dense, x)[0]
    target = 1 - count(uniform(dense, data, scores, x), x)[0] / dense_macs
    dense_val, dense_test = (evaluate(dense, data, split=s) for s in ("val", "test"))
    results = ResultsFile(args.results)
    for arm in args.arms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()

            def fine_tune(model: torch.nn.Module, description: str, seed: int = seed) -> None:
                torch.manual_seed(seed)
                train(model, data, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128,
                                               kd_alpha=args.kd_alpha, seed=seed,
                                               monitor=False),
                      teacher=dense, description=description)

            if arm == "uniform":
                model = uniform(dense, data, scores, x)
            elif arm == "progressive":
                model = progressive(dense, data, scores, x, fine_tune)
            elif arm == "widths":
                model = given_widths(dense, scores, x, [int(w) for w in args.widths.split(",")])
            else:
                model = greedy(dense, data, scores, x, target)
            widths = {n: m.out_channels for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Conv2d)}
            fine_tune(model, f"fine-tuning {arm}")
            row = {"macs_cut": 1 - count(model, x)[0] / dense_macs, "widths": widths,
                   "params": sum(p.numel() for p in model.parameters()),
                   "validation_drop": (dense_val - evaluate(model, data, split="val")) * 100,
                   "test_drop": (dense_test - evaluate(model, data, split="test")) * 100,
                   "dense_validation": dense_val, "dense_test": dense_test,
                   "wall_s": round(time.perf_counter() - t0, 1)}
            name = f"widths {args.widths}" if arm == "widths" else arm
            key = f"{name} seed {seed}" + (f" lr {args.lr:g}" if args.lr != 0.01 else "") + (
                f" {args.epochs:g} epochs" if args.epochs != 2 else "") + (
                f" kd alpha {args.kd_alpha:g}" if args.kd_alpha != 0.7 else "")
            results.save(key, row,
                         show=f"{key}: -{row['macs_cut']:.1%} MACs, {row['params']:,} params, "
                              f"{widths}, "
                              f"validation drop {row['validation_drop']:.2f}, "
                              f"test drop {row['test_drop']:.2f}")


if __name__ == "__main__":
    main()
