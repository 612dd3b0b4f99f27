"""The decisions of a compress run, apart from the pipeline that carries them out: how long
fine-tuning and quantization-aware training run, which precisions are tried, which pruning
goal and schedule the options name, what fine-tuning distills from, and when QAT is worth
running. Each rule is written once here and its docstring says why."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from numpy.typing import ArrayLike
from torch import nn

from edgeprune.console import info
from edgeprune.devices.targets import TargetProfile
from edgeprune.errors import EdgepruneError
from edgeprune.export.precision import MIN_CALIBRATION_SAMPLES
from edgeprune.jobs.config import SCHEDULE_CHOICES, CompressConfig
from edgeprune.pruning.goals import (
    FlopsReduction,
    Goal,
    LatencyBudget,
    LayerRatios,
    ParamsReduction,
    parse_layer_ratios,
)
from edgeprune.pruning.level_search import SearchSettings
from edgeprune.pruning.schedule import (
    Iterative,
    LayerByLayer,
    OneShot,
    Schedule,
    StepCallback,
    StepInfo,
)
from edgeprune.stats import PairedDrop, paired_drop
from edgeprune.training import TrainConfig, train

FINETUNE_SAMPLES = 360_000  # images fine-tuning from dense sees: 6 Fashion-MNIST epochs
STEP_FINETUNE_SAMPLES = 120_000  # ... and a search trial cut from an accepted trial: 2
MAX_AUTO_EPOCHS = 60  # ... but no more epochs than this on a small dataset
QAT_SAMPLES = 15_000  # images quantization-aware training sees by default ...
MAX_QAT_EPOCHS = 10  # ... in at most this many epochs
QAT_LR_SHARE = 0.1  # ... at this share of the fine-tuning learning rate
DEFAULT_FLOPS_REDUCTION = 0.5
"""The one level `prune` cuts to when no goal is named."""
DENSE_TRIALS_PER_BUDGET = 2  # the default search budget: two trials cut from the dense model
STEP_TRIALS_PER_BUDGET = 2  # ... and two cut from accepted trials ...
SEARCH_START, SEARCH_STEP, SEARCH_MIN_STEP = 0.5, 0.2, 0.05


def finetune_epochs(cfg: CompressConfig, train_images: int) -> float:
    """Fine-tuning epochs of a model pruned from the dense one (a pinned run, or a search trial
    cut from the dense model): --epochs, else enough epochs to see about FINETUNE_SAMPLES
    images, at most MAX_AUTO_EPOCHS.

    The demo model's 8x cut (-62.6% MACs, full Fashion-MNIST, int8 file) lost 0.56
    validation / 1.22 test points after 2 epochs of distillation, 0.38 / 0.52 after 6 and
    0.26 / 0.58 after 8 (docs/BENCHMARKS.md, "How long to fine-tune a cut from the dense
    model"): a longer one-cycle schedule recovers it, where 2 epochs left that cut at the
    tolerance's edge; 6 is as good as 8 on the test images and 2 epochs cheaper. On the
    2,000-image embedded subset the cap rules: 10 epochs left 2.30 points, 30 left 1.00 and
    60 left 0.90."""
    if cfg.epochs is not None:
        return cfg.epochs
    return _epochs_to_see(FINETUNE_SAMPLES, train_images)


def _epochs_to_see(images: int, train_images: int) -> float:
    """Whole epochs of `train_images` that show about `images` images, 1 to MAX_AUTO_EPOCHS."""
    return float(min(MAX_AUTO_EPOCHS, max(1, math.ceil(images / train_images))))


def trial_epochs(cfg: CompressConfig, train_images: int, from_dense: bool) -> float:
    """Fine-tuning epochs of one level-search trial (--epochs sets them all).

    A trial cut from the dense model fine-tunes as long as a pinned run
    (`finetune_epochs`), so it is judged in the state it ships in. A trial cut from an
    accepted trial's model starts from a network that has recovered already and loses only
    the step between the two levels, so it fine-tunes for STEP_FINETUNE_SAMPLES images, a
    third as long (NetAdapt's short-term fine-tuning of each step, Yang et al. 2018).
    Judged after half an epoch, full Fashion-MNIST's -62.6% cut lost 1.54 validation points
    and was rejected; after the 6 epochs of a cut from the dense model, 0.38."""
    if cfg.epochs is not None or from_dense:
        return finetune_epochs(cfg, train_images)
    return _epochs_to_see(STEP_FINETUNE_SAMPLES, train_images)


def search_settings(cfg: CompressConfig, train_images: int) -> SearchSettings:
    """How the level search runs: from SEARCH_START up in SEARCH_STEP steps, the step halved
    on each rejection, until the bracket is narrower than SEARCH_MIN_STEP or --search-budget
    (default: the fine-tuning epochs of DENSE_TRIALS_PER_BUDGET trials cut from the dense
    model and STEP_TRIALS_PER_BUDGET cut from accepted trials, so that a first level outside
    the tolerance leaves room for a shallower one and a step deeper from it) is spent, or
    the trials' wall time reaches --search-minutes (no new trial starts after it); with
    --epochs 0 the trials fine-tune nothing and only the bracket and the wall time end it."""
    budget = cfg.search_budget if cfg.search_budget is not None else (
        DENSE_TRIALS_PER_BUDGET * trial_epochs(cfg, train_images, from_dense=True)
        + STEP_TRIALS_PER_BUDGET * trial_epochs(cfg, train_images, from_dense=False))
    if cfg.epochs == 0:  # trials cost no fine-tuning, so the bracket alone ends the search
        budget = math.inf  # (a handful of trials)
    wall_s = cfg.search_minutes * 60 if cfg.search_minutes is not None else None
    return SearchSettings(start=SEARCH_START, step=SEARCH_STEP, min_step=SEARCH_MIN_STEP,
                          max_level=0.9, budget=budget, wall_s=wall_s)


def qat_epochs(cfg: CompressConfig, train_images: int) -> float:
    """--qat-epochs, else enough to see QAT_SAMPLES images, at most MAX_QAT_EPOCHS.

    On the 2,000-image embedded subset, 0.25 epochs of QAT left the int8 file 1.2 points
    below dense fp32; 7.5 epochs (15k images) brought it to 0.8."""
    if cfg.qat_epochs is not None:
        return cfg.qat_epochs
    return min(MAX_QAT_EPOCHS, QAT_SAMPLES / train_images)


def qat_lr(cfg: CompressConfig) -> float:
    """Peak learning rate of quantization-aware training: a tenth of fine-tuning's, since it
    starts from a fine-tuned model and only adapts it to the int8 rounding."""
    return cfg.lr * QAT_LR_SHARE


def candidate_precisions(requested: str, preferred: tuple[str, ...]) -> list[str]:
    """The precisions compress tries: the target's preference list for 'auto', else the one
    asked for."""
    return list(preferred) if requested == "auto" else [requested]


def precisions_to_try(cfg: CompressConfig, target: TargetProfile, train_images: int
                      ) -> list[str]:
    """The precisions tried; int8 needs MIN_CALIBRATION_SAMPLES training images to calibrate
    on (auto leaves it out with a note when there are fewer, an explicit int8 is an error)."""
    precisions = candidate_precisions(cfg.precision, target.precisions)
    if "int8" in precisions and train_images < MIN_CALIBRATION_SAMPLES:
        why = (f"int8 needs at least {MIN_CALIBRATION_SAMPLES} training images to calibrate "
               f"its activation ranges; the data has {train_images}")
        if cfg.precision == "int8":
            raise EdgepruneError(f"--precision int8: {why}")
        info(f"precision: {why}, so int8 is not tried")
        precisions = [p for p in precisions if p != "int8"] or ["fp32"]
    return precisions


DECISION_CONFIDENCE = 0.95
"""How sure a decision must be that a file is within --max-drop (one-sided)."""


@dataclass(frozen=True)
class ToleranceVerdict:
    """Whether a file is within --max-drop of the reference on the decision images.

    A file is within the tolerance when the one-sided DECISION_CONFIDENCE upper bound of its
    drop (Newcombe's paired interval, `edgeprune.stats`) is, not merely its point estimate.
    The search tries several levels and keeps the deepest one that passes, so a point rule
    keeps the level whose validation images happened to flatter it most (the winner's
    curse): on full Fashion-MNIST the point rule accepted a cut at 0.68 points on 5,000
    validation images that lost 1.22 on the 5,000 test images, and ResNet-20 0.90 that lost
    1.30. When the split is too small for even a file that agrees with the reference on
    every image to have a bound within the tolerance (about 300 images for one point), no
    bound can pass, and the point estimate judges instead (`by_bound` is False; the run says
    so once)."""

    drop: PairedDrop
    """The drop in points; `drop.high` is the one-sided upper bound."""
    by_bound: bool
    within: bool

    @property
    def judged(self) -> float:
        """The figure the tolerance compared: the bound, or the point estimate."""
        return self.drop.high if self.by_bound else self.drop.points

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the drop, its bound and the figure the tolerance judges."""
        return {"points": self.drop.points, "bound": self.drop.high, "n": self.drop.n,
                "confidence": DECISION_CONFIDENCE, "judged": self.judged,
                "rule": "bound" if self.by_bound else "point"}


def tolerance_verdict(reference_right: ArrayLike, candidate_right: ArrayLike,
                      max_drop: float) -> ToleranceVerdict:
    """Judge a file by its per-image correctness against the reference's on the same images
    (see `ToleranceVerdict` for the rule and why)."""
    confidence = 2 * DECISION_CONFIDENCE - 1  # a two-sided interval's upper end at 90%
    drop = paired_drop(reference_right, candidate_right, confidence)
    floor = paired_drop(reference_right, reference_right, confidence).high
    by_bound = floor <= max_drop + 1e-9
    judged = drop.high if by_bound else drop.points
    return ToleranceVerdict(drop, by_bound, judged <= max_drop + 1e-9)


def qat_wanted(int8: ToleranceVerdict, fp32: ToleranceVerdict) -> bool:
    """Quantization-aware training is worth running when the int8 file (post-training
    quantization) is outside the tolerance while the fp32 file of the same model is within
    it: then quantization, not pruning, lost the accuracy."""
    return not int8.within and fp32.within


def teacher(cfg: CompressConfig, dense: nn.Module) -> nn.Module | None:
    """The model fine-tuning distills from: `dense` with `--finetune distill`, none (plain
    cross-entropy) with `ce`."""
    return dense if cfg.finetune == "distill" else None


def choose_goal(flops_reduction: float | None = None, params_reduction: float | None = None,
                latency_ms: float | None = None, layer_ratios: str | None = None,
                target: TargetProfile | None = None, threads: int | None = None,
                measured_dense_ms: float | None = None, precision: str = "fp32") -> Goal:
    """The one goal the options name (default: DEFAULT_FLOPS_REDUCTION of the FLOPs); naming
    two is an error. A latency budget needs the target it is measured against."""
    given = [n for n, v in (("--flops-reduction", flops_reduction),
                            ("--params-reduction", params_reduction),
                            ("--latency-ms", latency_ms), ("--layer-ratios", layer_ratios))
             if v is not None]
    if len(given) > 1:
        raise EdgepruneError(f"choose one goal, not {' and '.join(given)}")
    if params_reduction is not None:
        return ParamsReduction(params_reduction)
    if latency_ms is not None:
        if target is None:
            raise EdgepruneError("--latency-ms needs a target to estimate latency on")
        return LatencyBudget(latency_ms, target, threads, measured_dense_ms, precision)
    if layer_ratios is not None:
        return LayerRatios(parse_layer_ratios(layer_ratios))
    return FlopsReduction(DEFAULT_FLOPS_REDUCTION if flops_reduction is None
                          else flops_reduction)


def choose_schedule(schedule: str, step: float = CompressConfig.step,
                    between: StepCallback | None = None) -> Schedule:
    """The schedule named by --schedule (one-shot, iterative, layer-by-layer)."""
    if schedule == "one-shot":
        return OneShot()
    if schedule == "iterative":
        return Iterative(step=step, between=between)
    if schedule == "layer-by-layer":
        return LayerByLayer(between=between)
    raise EdgepruneError(f"unknown schedule {schedule!r}; choose one of "
                         f"{', '.join(SCHEDULE_CHOICES)}")


def fine_tune_between(dense: nn.Module, data: Any, epochs: float, lr: float = CompressConfig.lr,
                      seed: int = 0, distill: bool = True) -> StepCallback | None:
    """A between-steps callback for the iterative and layer-by-layer schedules: `epochs` of
    distillation from the dense model on `data`, or of cross-entropy without `distill` (None
    when `epochs` is 0)."""
    if epochs <= 0:
        return None

    def between(model: nn.Module, step: StepInfo) -> None:
        train(model, data, TrainConfig(epochs=epochs, lr=lr, seed=seed + step.index),
              teacher=dense if distill else None,
              description=f"fine-tuning after step {step.index}")
        model.cpu()

    return between
