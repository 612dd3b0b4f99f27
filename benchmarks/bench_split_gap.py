"""How much of a validation-to-test gap is the split: a compress run's dense fp32 and shipped
files scored on every held-out image, then split into two halves at random many times.

    python benchmarks/bench_split_gap.py RUN_DIR [--halvings 2000] [--seed 1]

compress splits the held-out images once (`--seed`) into a decision half (validation) and a
report half (test). Every run with the same seed shares those halves, so a gap between them
repeats from run to run. This prints the shipped file's drop on all held-out images with its
paired 95% interval, the gap (test minus validation) this run's split gave, and the spread of
that gap over random halvings of the same images: how often a split alone gives a gap this
large. Figures are this host's (the files run in their runtime here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgeprune.data import load_dataset
from edgeprune.export.api import file_predictions
from edgeprune.stats import paired_drop


def right(path: Path, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Whether the file at `path` gets each image right."""
    return file_predictions(path, x) == y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--halvings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    dataset = json.loads((args.run_dir / "dataset.json").read_text())
    shipped = summary["shipped"]
    dense = next(c for c in summary["candidates"]
                 if (c["model"], c["precision"]) == ("dense", "fp32"))
    data = load_dataset(dataset["name"])
    x, y = zip(*data.loader("test", batch_size=1000), strict=True)
    x, labels = torch.cat(x), torch.cat([torch.as_tensor(v) for v in y]).numpy()
    ref = right(args.run_dir / dense["path"], x, labels)
    cand = right(args.run_dir / shipped["path"], x, labels)
    whole = paired_drop(ref, cand)
    seen = shipped["test_drop"]["points"] - shipped["validation_drop"]["points"]
    rng = np.random.default_rng(args.seed)
    half = len(labels) // 2
    gaps = []
    for _ in range(args.halvings):
        order = rng.permutation(len(labels))
        val, test = order[:half], order[half:2 * half]
        gaps.append((ref[test].mean() - cand[test].mean()
                     - ref[val].mean() + cand[val].mean()) * 100)
    gaps = np.asarray(gaps)
    print(f"{shipped['name']} on all {len(labels)} held-out images: drop {whole.points:.2f} "
          f"points (95% interval {whole.low:.2f} to {whole.high:.2f})")
    print(f"this run's split: validation {shipped['validation_drop']['points']:.2f}, test "
          f"{shipped['test_drop']['points']:.2f}, gap {seen:+.2f}")
    print(f"gap over {args.halvings} random halvings: sd {gaps.std():.2f}, "
          f"P(gap >= {seen:.2f}) = {(gaps >= seen - 1e-9).mean():.3f}")


if __name__ == "__main__":
    main()
