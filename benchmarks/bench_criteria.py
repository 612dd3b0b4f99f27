"""Criteria benchmark: top-1 of every criterion and baseline after one-shot pruning to several
FLOPs reductions, with the same surgery for all (`edgeprune.pruning.prune`, channels rounded
to 8, the layer allocation set by --policy: global ranking, global ranking of per-layer ranks,
or the same share in every layer), on Fashion-MNIST.

    python benchmarks/bench_criteria.py [--model demo] [--sections raw,finetune,scarce]
                                        [--policy global,rank,local] [--seeds 3]

Sections (each result is appended to --json as soon as it exists, and a rerun skips what is
there, so the script can be stopped and resumed):
- raw: (a) no fine-tuning, and (a') after BatchNorm re-calibration on --recal-samples training
  images (no weight update), for every criterion at every --flops, over --seeds seeds (seed s
  draws the reference images, the AM images' start and random's scores); each criterion is
  scored once per seed and pruned under every --policy; also the scoring time;
- finetune: (b) after --finetune-epochs of fine-tuning (KD from the unpruned model, as
  `compress` does) at --finetune-flops, for --finetune-criteria;
- scarce: (c) the LRP paper's data-scarce setting: the criterion sees 1/5/10 reference
  samples per class, no fine-tuning; reported raw and with BatchNorm re-calibrated on the same
  few images (data-free criteria do not change and are listed once).
Then the markdown tables are written to --md; whatever follows the notes marker in an existing
--md file (the analysis) is kept.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch
from results_file import ResultsFile

from edgeprune.console import set_quiet
from edgeprune.criteria import get_criterion, list_criteria
from edgeprune.criteria.am_images import AMConfig
from edgeprune.data import first_per_class, load_dataset
from edgeprune.models import load_model
from edgeprune.pruning import prune
from edgeprune.pruning.bn_recalibration import recalibrate_bn
from edgeprune.training import TrainConfig, evaluate, train

POLICIES = {
    "global": "global ranking (the default of `prune()` and `edgeprune prune`: one threshold "
              "over all layers' per-layer-normalized scores)",
    "rank": "global ranking of per-layer ranks (each layer's scores replaced by their ranks "
            "before global ranking: the same allocation for every criterion, set only by the "
            "layer widths; the criterion only picks which channels)",
    "local": "uniform per-layer ratio (the default of `compress`, global_ranking=False: every "
             "layer loses the same share, the criterion only picks which channels)",
}
INTERPRETABILITY = ["actmax", "lrp", "lrp-logit", "function", "fmcluster", "concept"]
BASELINES = ["l1", "l2", "fpgm", "taylor", "hrank", "gradient", "act-taylor", "random"]
NOTES = "<!-- notes: kept when the tables are regenerated -->"
SCARCE = ["lrp", "lrp-logit", "gradient", "act-taylor", "taylor", "hrank", "fmcluster", "concept",
          "function"]


def key(section: str, policy: str, name: str, x: object, flops: float) -> str:
    """Results key; global ranking (the default of `prune()`) keeps the plain name."""
    return f"{section}{'' if policy == 'global' else '@' + policy}/{name}/{x}/{flops}"


def rank_scores(values: torch.Tensor) -> torch.Tensor:
    """A layer's scores replaced by their ranks, (position from the bottom + 1) / C: every
    criterion then gets the same per-layer allocation from global ranking."""
    out = torch.empty(len(values))
    out[torch.argsort(values, stable=True)] = torch.arange(1, len(values) + 1) / len(values)
    return out


class Bench:
    """Holds the dense model, data, results file and the shared evaluation helpers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = load_dataset(args.dataset)
        self.dense = load_model(args.model, in_channels=self.data.spec.channels,
                                num_classes=self.data.spec.num_classes).model.eval()
        self.example = torch.zeros(1, *self.data.spec.shape)
        self.references: dict[int, list] = {}
        self.recal = self.data.reference(args.recal_samples, seed=1, batch_size=128)
        self.pool = self.data.reference(2000, seed=2)  # the data-scarce draws
        self.store = ResultsFile(Path(args.json))

    @property
    def results(self) -> dict:
        return self.store.data

    def save(self, key: str, value: object) -> None:
        self.store.save(key, value)

    def reference(self, seed: int) -> list:
        """The criterion's reference images for one seed (seed 0: the draw of every earlier
        run, so its results stay valid)."""
        if seed not in self.references:
            self.references[seed] = self.data.reference(self.args.score_samples, seed=seed)
        return self.references[seed]

    def accuracy(self, model: torch.nn.Module) -> float:
        return evaluate(model, self.data, limit=self.args.eval_limit)

    def criterion(self, name: str, seed: int = 0):
        options = {"am": AMConfig(steps=self.args.am_steps, seed=seed)} \
            if name in ("actmax", "function") else {"seed": seed} if name == "random" else {}
        return get_criterion(name, **options)

    def score(self, name: str, batches, seed: int = 0) -> tuple[dict, float]:
        crit = self.criterion(name, seed)
        t0 = time.perf_counter()
        scores = crit.score(copy.deepcopy(self.dense), batches if crit.needs_data else None)
        return scores, time.perf_counter() - t0

    def pruned(self, scores: dict, flops: float, policy: str, name: str = "",
               batches: list | None = None):
        """The dense model pruned with `scores`; a criterion whose scores depend on the keep
        counts (fmcluster) is scored again on `batches` for the counts found, as `prune()`
        does when it scores itself."""
        result = self._prune(scores, flops, policy)
        again = self.criterion(name).with_keep_counts(
            {n: len(result.kept.get(n, range(len(v)))) for n, v in scores.items()}) \
            if name else None
        if again is None:
            return result
        return self._prune(again.score(copy.deepcopy(self.dense), batches), flops, policy)

    def _prune(self, scores: dict, flops: float, policy: str):
        if policy == "rank":
            scores = {n: rank_scores(v) for n, v in scores.items()}
        return prune(self.dense, self.example, scores=scores, flops_reduction=flops,
                     round_to=self.args.round_to, global_ranking=policy != "local")

    def raw_and_recal(self, model: torch.nn.Module, recal_batches) -> tuple[float, float]:
        raw = self.accuracy(model)
        recalibrate_bn(model, recal_batches)
        return raw, self.accuracy(model)


def run_dense(bench: Bench) -> None:
    if "dense" not in bench.results:
        macs = bench.pruned({}, 0.0, "global").macs_before
        bench.save("dense", {"top1": bench.accuracy(bench.dense), "macs": macs})


def run_raw(bench: Bench, criteria: list[str]) -> None:
    for seed in range(bench.args.seeds):
        for name in criteria:
            cells = [(p, f, key("raw", p, name, seed, f))
                     for p in bench.args.policy for f in bench.args.flops]
            if all(k in bench.results for *_, k in cells):
                continue
            scores, wall = bench.score(name, bench.reference(seed), seed)
            for policy, flops, k in cells:
                if k in bench.results:
                    continue
                result = bench.pruned(scores, flops, policy, name, bench.reference(seed))
                raw, recal = bench.raw_and_recal(result.model, bench.recal)
                bench.save(k, {"raw": raw, "recal": recal, "score_s": wall,
                                 "flops_removed": result.flops_reduction,
                                 "params": result.params_after})


def run_finetune(bench: Bench, criteria: list[str]) -> None:
    cfg = TrainConfig(epochs=bench.args.finetune_epochs, lr=bench.args.finetune_lr,
                      batch_size=128, seed=0)
    policy = bench.args.policy[0]
    for flops in bench.args.finetune_flops:
        for name in criteria:
            k = key("finetune", policy, name, 0, flops)
            if k in bench.results:
                continue
            scores, _ = bench.score(name, bench.reference(0))
            model = bench.pruned(scores, flops, policy, name, bench.reference(0)).model
            recalibrate_bn(model, bench.recal)
            t0 = time.perf_counter()
            train(model, bench.data, cfg, teacher=bench.dense, description=f"fine-tune {name}")
            bench.save(k, {"top1": bench.accuracy(model), "epochs": cfg.epochs,
                             "wall_s": time.perf_counter() - t0})


def run_scarce(bench: Bench, criteria: list[str]) -> None:
    policy = bench.args.policy[0]
    for n in bench.args.per_class:
        few = first_per_class(bench.pool, n)
        for name in criteria:
            keys = [key("scarce", policy, name, n, f) for f in bench.args.flops]
            if all(k in bench.results for k in keys):
                continue
            scores, wall = bench.score(name, few)
            for flops, k in zip(bench.args.flops, keys, strict=True):
                if k in bench.results:
                    continue
                model = bench.pruned(scores, flops, policy, name, few).model
                raw, recal = bench.raw_and_recal(model, few)
                bench.save(k, {"raw": raw, "recal": recal, "score_s": wall})


# ------------------------------------------------------------------ markdown

def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _get(results: dict, key: str, field: str) -> float | None:
    return results.get(key, {}).get(field)


def _seeds(results: dict, policy: str, name: str, flops: float, field: str,
           seeds: int) -> list[float]:
    return [results[k][field] for s in range(seeds)
            if (k := key("raw", policy, name, s, flops)) in results]


def _seeds_cell(values: list[float]) -> str:
    """Mean (± half the range) over the seeds that have a result; one value stands alone."""
    if len(values) <= 1:
        return _pct(values[0] if values else None)
    mean = sum(values) / len(values)
    return f"{100 * mean:.1f} (±{50 * (max(values) - min(values)):.1f})"


def _removed(results: dict, policy: str, flops: float) -> str:
    """The FLOPs share actually removed at a target (range over criteria)."""
    values = [v["flops_removed"] for k, v in results.items()
              if k.startswith(key("raw", policy, "", "", "").split("/")[0] + "/")
              and k.endswith(f"/{flops}") and isinstance(v, dict) and "flops_removed" in v]
    if not values:
        return ""
    lo, hi = 100 * min(values), 100 * max(values)
    return f" (-{lo:.0f}%)" if round(lo) == round(hi) else f" (-{lo:.0f}..{hi:.0f}%)"


def complete_seeds(results: dict, policy: str, flops: float, seeds: int) -> int:
    """How many seeds, from 0, every criterion has at this FLOPs level under `policy`: a
    column averages over those only, so every cell of it means the same."""
    done = 0
    while done < seeds and all(key("raw", policy, n, done, flops) in results
                               for n in INTERPRETABILITY + BASELINES):
        done += 1
    return max(done, 1)


def table_raw(results: dict, args: argparse.Namespace, policy: str) -> list[str]:
    flops = args.flops
    seeds = {f: complete_seeds(results, policy, f, args.seeds) for f in flops}
    head = "| criterion | " + " | ".join(
        f"-{round(f * 100)}%{_removed(results, policy, f)}, {seeds[f]} seed(s) raw | BN-recal"
        for f in flops) + " | scoring time |"
    lines = [head, "|---|" + "---|" * (2 * len(flops) + 1)]
    for name in INTERPRETABILITY + BASELINES:
        cells = [_seeds_cell(_seeds(results, policy, name, f, field, seeds[f]))
                 for f in flops for field in ("raw", "recal")]
        walls = _seeds(results, policy, name, flops[0], "score_s", seeds[flops[0]])
        wall = f"{sum(walls) / len(walls):.1f} s" if walls else "–"
        tag = " *(interp.)*" if name in INTERPRETABILITY else ""
        lines.append(f"| {name}{tag} | " + " | ".join(cells) + f" | {wall} |")
    return lines


def table_finetune(results: dict, args: argparse.Namespace, policy: str) -> list[str]:
    flops = args.finetune_flops
    lines = ["| criterion | " + " | ".join(f"-{round(f * 100)}% FLOPs" for f in flops) + " |",
             "|---|" + "---|" * len(flops)]
    for name in INTERPRETABILITY + BASELINES:
        cells = [_pct(_get(results, key("finetune", policy, name, 0, f), "top1"))
                 for f in flops]
        if any(c != "–" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def table_scarce(results: dict, args: argparse.Namespace, policy: str) -> list[str]:
    lines = []
    for flops in args.flops:
        lines += [f"**-{round(flops * 100)}% FLOPs** (raw / BN re-calibrated on the same few "
                  "images)", "",
                  "| criterion | " + " | ".join(f"{n}/class" for n in args.per_class) + " |",
                  "|---|" + "---|" * len(args.per_class)]
        for name in SCARCE:
            cells = [f"{_pct(_get(results, k, 'raw'))} / {_pct(_get(results, k, 'recal'))}"
                     for n in args.per_class if (k := key("scarce", policy, name, n, flops))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name in ("l1", "fpgm", "random"):
            k = key("raw", policy, name, 0, flops)
            cell = f"{_pct(_get(results, k, 'raw'))} / {_pct(_get(results, k, 'recal'))}"
            lines.append(f"| {name} (data-free; BN-recal on {args.recal_samples}) | " +
                         " | ".join([cell] + ["same"] * (len(args.per_class) - 1)) + " |")
        lines.append("")
    return lines


def markdown(bench: Bench, command: str) -> str:
    r, a = bench.results, bench.args
    dense = r.get("dense", {})
    lines = [
        "# Criteria benchmark",
        "",
        f"Model `{a.model}` on {a.dataset} (dense top-1 {_pct(dense.get('top1'))}%, "
        f"{dense.get('macs', 0) / 1e6:.1f} M MACs). One-shot `prune()`, "
        f"channels rounded to {a.round_to}; criteria scored on {a.score_samples} class-balanced"
        f" training images; top-1 on {a.eval_limit or 'all'} test images; "
        f"BN re-calibration on {a.recal_samples} training images; AM steps {a.am_steps}; "
        "(a): mean (± half range) over the seeds every criterion has (the seed sets the "
        "reference draw, the AM start and random's scores; scarce and fine-tuning: seed 0). "
        f"Host: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
        "",
        "Commands (run from the repository root; each resumes from the same JSON):",
        "",
        *[f"    {c}" for c in r.get("commands", [command])],
        "",
    ]
    for policy, title in POLICIES.items():
        prefix = key("raw", policy, "", "", "").split("/")[0] + "/"
        if not any(k.startswith(prefix) for k in r):
            continue
        lines += [
            f"## Policy: {title}", "",
            "### (a) no fine-tuning, raw and after BatchNorm re-calibration (top-1 %)", "",
            "Each column: mean (± half the range) over the seeds every criterion has at that "
            "level (in its head).", "",
            "Column heads: the FLOPs target and, in brackets, the share actually removed "
            "(over all criteria).", "",
            *table_raw(r, a, policy), "",
        ]
        if any(k.startswith(prefix.replace("raw", "finetune", 1)) for k in r):
            lines += [f"### (b) after {a.finetune_epochs:g} epoch(s) of fine-tuning, KD from "
                      "the unpruned model (top-1 %)", "", *table_finetune(r, a, policy), ""]
        if any(k.startswith(prefix.replace("raw", "scarce", 1)) for k in r):
            lines += ["### (c) data-scarce: reference samples per class, no fine-tuning "
                      "(top-1 %)", "", *table_scarce(r, a, policy)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--sections", default="raw,finetune,scarce")
    p.add_argument("--criteria", default=",".join(INTERPRETABILITY + BASELINES))
    p.add_argument("--flops", default="0.3,0.5,0.7")
    p.add_argument("--finetune-flops", default="0.5")
    p.add_argument("--finetune-criteria", default=",".join(INTERPRETABILITY + BASELINES))
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--per-class", default="1,5,10")
    p.add_argument("--score-samples", type=int, default=500)
    p.add_argument("--recal-samples", type=int, default=2000)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--am-steps", type=int, default=48)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--policy", default="global",
                   help="comma-separated: global, rank, local (fine-tuning and scarce: the "
                   "first)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/criteria.json")
    p.add_argument("--md", default="benchmarks/results/criteria.md")
    args = p.parse_args()
    args.flops = [float(v) for v in args.flops.split(",")]
    args.finetune_flops = [float(v) for v in args.finetune_flops.split(",")]
    args.per_class = [int(v) for v in args.per_class.split(",")]
    args.policy = args.policy.split(",")
    if set(args.policy) - set(POLICIES):
        sys.exit(f"unknown policy in {','.join(args.policy)}; choose from {', '.join(POLICIES)}")
    torch.set_num_threads(args.threads)
    set_quiet(True)
    unknown = set(args.criteria.split(",")) - set(list_criteria())
    if unknown:
        sys.exit(f"unknown criteria: {', '.join(sorted(unknown))}")
    bench = Bench(args)
    run_dense(bench)
    sections = args.sections.split(",")
    if "raw" in sections:
        run_raw(bench, args.criteria.split(","))
    if "scarce" in sections:
        run_scarce(bench, [c for c in SCARCE if c in args.criteria.split(",")])
    if "finetune" in sections:
        run_finetune(bench, args.finetune_criteria.split(","))
    command = ("python benchmarks/bench_criteria.py " + " ".join(sys.argv[1:])).strip()
    if command not in bench.results.setdefault("commands", []):
        bench.results["commands"].append(command)
        bench.save("commands", bench.results["commands"])
    md = Path(args.md)
    notes = md.read_text().partition(NOTES)[2] if md.exists() else ""
    md.write_text(markdown(bench, command.strip()) + "\n" + NOTES + (notes or "\n"))
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
