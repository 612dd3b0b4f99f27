"""Peak memory and wall time of each criterion's scoring, and whether a code change kept its
ranking: every run is `edgeprune score MODEL --criterion C --out scores.pt` in a child process
of its own, whose peak resident memory (VmHWM) is read while it runs.

    python benchmarks/bench_scoring.py --model torchvision:mobilenet_v2 --input-size 3x224x224 \\
        --dataset synthetic --score-samples 256 --criteria l1,taylor,hrank,fmcluster,lrp,concept \\
        --label after --json benchmarks/results/scoring.json --md benchmarks/results/scoring.md

`--tree DIR` runs another checkout's code (a `git worktree` of an earlier commit) under the
label given, for the before column. A child that passes `--max-rss-gb` (default 16) or
`--timeout` seconds is stopped and recorded as such, so a before run that would exhaust the
machine cannot. `--compare BEFORE AFTER` adds, per model and criterion, the Spearman
correlation of the two labels' scores (all channels together, and the lowest of any layer).
Results merge into --json as they come (a rerun skips what is there, unless `--redo`); the
table goes to --md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from results_file import ResultsFile
from scipy.stats import spearmanr

BOOT = """
import sys
sys.argv[0] = "edgeprune"
if {tree!r}:
    sys.path.insert(0, {tree!r})
from edgeprune.cli import main
main()
"""


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a live process, in kB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_score(args: argparse.Namespace, model: str, criterion: str, out: Path) -> dict:
    """One scoring run in a child process: wall, peak RSS, and how it ended."""
    command = [sys.executable, "-c", BOOT.format(tree=args.tree or ""), "score", model,
               "--criterion", criterion, "--dataset", args.dataset, "--score-samples",
               str(args.score_samples), "--out", str(out), "--quiet"]
    if args.input_size:
        command += ["--input-size", args.input_size]
    if args.score_batch and not args.tree:
        command += ["--score-batch", str(args.score_batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    peak, status = 0, "ok"
    while child.poll() is None:
        peak = max(peak, peak_rss_kb(child.pid))
        if peak > args.max_rss_gb * 1e6:
            status = f"stopped at {args.max_rss_gb:g} GB"
        elif time.perf_counter() - t0 > args.timeout:
            status = f"stopped after {args.timeout:g} s"
        if status != "ok":
            child.kill()
            break
        time.sleep(0.1)
    _, err = child.communicate()
    wall = time.perf_counter() - t0
    if status == "ok" and child.returncode != 0:
        status = "failed: " + (err.strip().splitlines() or ["?"])[-1][:200]
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(peak / 1e6, 2), "status": status,
            "score_batch": "before" if args.tree else args.score_batch or "auto",
            "threads": args.threads}


def _tied(scores: torch.Tensor) -> bool:
    spread = float(scores.max() - scores.min())
    return spread <= 1e-4 * max(float(scores.abs().max()), 1e-30)


def spearman(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict:
    """Spearman r of two score sets over all channels, and the lowest per layer (layers whose
    scores are tied to within float noise, a relative spread under 1e-4, in either set are
    left out of the minimum: their order is rounding)."""
    names = [n for n in before if n in after]
    a = torch.cat([before[n].flatten() for n in names]).double().numpy()
    b = torch.cat([after[n].flatten() for n in names]).double().numpy()
    per_layer = []
    for n in names:
        if len(before[n]) > 2 and not _tied(before[n]) and not _tied(after[n]):
            per_layer.append(float(spearmanr(before[n].double().numpy(),
                                             after[n].double().numpy()).statistic))
    return {"all": round(float(spearmanr(a, b).statistic), 5),
            "min_layer": round(min(per_layer), 5) if per_layer else None}


def table(results: dict, labels: list[str]) -> str:
    lines = ["| model | criterion | " + " | ".join(f"{label} wall | {label} peak RSS"
                                                    for label in labels) + " | Spearman |",
             "|---|---|" + "---:|---:|" * len(labels) + "---:|"]
    for key, row in sorted(results.get("runs", {}).items()):
        model, criterion = key.split(" ", 1)
        cells = []
        for label in labels:
            run = row.get(label)
            if run is None:
                cells += ["", ""]
            elif run["status"] == "ok":
                batch = "" if run["score_batch"] in ("before", None) else \
                    f" (batch {run['score_batch']})"
                cells += [f"{run['wall_s']:.0f} s", f"{run['peak_rss_gb']:.2f} GB{batch}"]
            else:
                cells += [f"{run['status']}", f"> {run['peak_rss_gb']:.1f} GB"
                          if run["status"].startswith("stopped at") else
                          f"{run['peak_rss_gb']:.2f} GB"]
        rho = row.get("spearman")
        cells.append(f"{rho['all']:.4f} (layer min {rho['min_layer']})" if rho else "")
        lines.append(f"| {model} | {criterion} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--criteria", default="l1,taylor,hrank,fmcluster,lrp,concept")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--input-size", default=None)
    parser.add_argument("--score-samples", type=int, default=256)
    parser.add_argument("--score-batch", type=int, default=None, help="default: auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tree", default=None, help="run this checkout's code instead")
    parser.add_argument("--label", default="after")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None)
    parser.add_argument("--redo", action="store_true", help="measure again what is there")
    parser.add_argument("--max-rss-gb", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--scores-dir", type=Path, default=Path("benchmarks/logs/scores"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scoring.json"))
    parser.add_argument("--md", type=Path, default=Path("benchmarks/results/scoring.md"))
    args = parser.parse_args()
    results = ResultsFile(args.json)
    runs = dict(results.data.get("runs", {}))
    for model in args.model:
        for criterion in args.criteria.split(","):
            key = (f"{model}{'@' + args.input_size if args.input_size else ''} {criterion}"
                   f"{'' if args.score_samples == 256 else f' ({args.score_samples} images)'}")
            row = dict(runs.get(key, {}))
            slug = key.replace(":", "_").replace(" ", "_").replace("@", "_")
            if args.compare:
                paths = [args.scores_dir / f"{slug}_{label}.pt" for label in args.compare]
                if all(p.exists() for p in paths):
                    row["spearman"] = spearman(*(torch.load(p) for p in paths))
            elif args.label not in row or args.redo:
                out = args.scores_dir / f"{slug}_{args.label}.pt"
                out.parent.mkdir(parents=True, exist_ok=True)
                row[args.label] = {**run_score(args, model, criterion, out),
                                   "score_samples": args.score_samples}
            runs[key] = row
            results.save("runs", runs, show=key)
    commands = list(results.data.get("commands", []))
    command = "python " + " ".join(sys.argv)
    if command not in commands:
        results.save("commands", [*commands, command])
    results.save("host", f"{platform.node()} ({os.cpu_count()} cores), this host")
    labels = sorted({label for row in runs.values() for label in row if label != "spearman"},
                    key=lambda label: (label != "before", label))
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(table(results.data, labels) + "\nCommands:\n\n" + "\n".join(
        f"    {c}" for c in results.data["commands"]) + "\n")


if __name__ == "__main__":
    main()
