"""What the stages of `compress` hand each other: the resolved inputs of a run, the images its
files are checked on, and the figures and result it reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeprune.data import DataBundle
from edgeprune.devices.targets import TargetProfile
from edgeprune.jobs.config import CompressConfig
from edgeprune.jobs.loading import take
from edgeprune.models import LoadedModel
from edgeprune.spec import InputSpec

EVAL_SAMPLES = 100  # shipped beside each model for the on-device runner's --eval ...
EVAL_SAMPLES_BYTES = 8_000_000  # ... fewer when 100 would make the batch larger than this
CALIBRATION_SAMPLES = 512  # training images int8 activation ranges are calibrated on
from edgeprune.export.validate import VERIFY_SAMPLES  # noqa: E402,F401  (one home: export)


@dataclass
class Inputs:
    """Everything a run works on, resolved and checked before any work starts."""

    cfg: CompressConfig
    target: TargetProfile
    loaded: LoadedModel
    data: DataBundle
    spec: InputSpec
    precisions: list[str]
    threads: int
    """The target's threads (or --threads): for the device and the estimates; this machine
    runs at most as many threads as it has cores (`inference_threads`)."""


@dataclass
class Samples:
    """The images a run's files are checked on: labelled test images (accuracy, and the
    first VERIFY_SAMPLES for parity), training images for int8 calibration, and the small
    batch shipped for the runner's --eval."""

    x: torch.Tensor
    y: torch.Tensor
    calibration: torch.Tensor | None
    shipped: int

    @classmethod
    def draw(cls, inputs: Inputs) -> Samples:
        cfg, data = inputs.cfg, inputs.data
        x, y = take(data, "test", cfg.eval_limit or len(data.test), cfg.seed)
        calibration = None
        if {"int8"} & set(inputs.precisions):
            calibration = take(data, "train", CALIBRATION_SAMPLES, cfg.seed)[0]
        per_image = x[0].numel() * 4
        shipped = max(8, min(EVAL_SAMPLES, len(y), EVAL_SAMPLES_BYTES // per_image))
        return cls(x, y, calibration, shipped)


@dataclass
class Failure:
    """A candidate file that could not be made (exported, verified, or QAT-trained), and
    why; recorded in the table, summary.json and the report while the run goes on."""

    name: str
    stage: str
    reason: str


@dataclass
class PrunedModel:
    """The level search's model with the figures the pipeline reads of a PruneResult."""

    model: torch.nn.Module
    flops_reduction: float
    macs_after: int
    params_after: int
    search: dict[str, Any]


@dataclass
class ModelFigures:
    """What the summary compares between the dense and the pruned model: PyTorch's figures
    and, per format, the fp32 file."""

    accuracy: float
    params: int
    macs: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CompressResult:
    """The outcome of a compress run: where it is, the before/after figures, every candidate
    file and the one shipped (None when none was within the tolerance) with the reason."""

    run_dir: Path
    target: str
    dense: ModelFigures
    pruned: ModelFigures
    wall_s: float
    stages: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    shipped: dict[str, Any] | None = None
    reason: str = ""
    max_drop: float = CompressConfig.max_drop
    latency_budget_ms: float | None = None
    failed: list[dict[str, str]] = field(default_factory=list)
    """Candidates that could not be made: name, stage and reason (see `Failure`)."""
    decided_by: str = ""
    """The latency figures the choice ranked by: the device's measurement, or the target's
    estimate when no device was attached (host timings are shown, never decide)."""
    search: dict[str, Any] | None = None
    """The level search: every trial (level, MACs, validation drop, accepted), why it
    stopped, the level shipped; None when --flops-reduction pinned the level."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d
