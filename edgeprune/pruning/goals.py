"""What the pruner aims at: a share of FLOPs or parameters removed, a latency budget on a target
device, or an explicit pruning ratio per layer. A searched goal says whether a candidate's
figures meet it; the search finds the smallest channel ratio that does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from edgeprune.devices.targets import TargetProfile, default_target
from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class Figures:
    """What a candidate costs: MACs and parameters counted by Torch-Pruning, the predicted
    latency on the goal's target when the goal is a latency budget, and its conv filters."""

    macs: int
    params: int
    latency_ms: float | None = None
    filters: int = 0


@dataclass(frozen=True)
class _Reduction:
    """Remove at least `fraction` of one of the candidate's `Figures` (`figure`)."""

    fraction: float = 0.5
    figure: ClassVar[str]
    option: ClassVar[str]
    noun: ClassVar[str]

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise EdgepruneError(f"{self.option} {self.fraction} must be in [0, 1)")

    def met(self, before: Figures, after: Figures) -> bool:
        total = getattr(before, self.figure)
        return 1.0 - getattr(after, self.figure) / total >= self.fraction if total else True

    def describe(self) -> str:
        return f"-{self.fraction:.0%} {self.noun}"

    def shortfall(self, before: Figures, best: Figures) -> str:
        share = 1 - getattr(best, self.figure) / getattr(before, self.figure)
        return f"at most {share:.1%} of the {self.noun} can be removed"


@dataclass(frozen=True)
class FlopsReduction(_Reduction):
    """Remove at least `fraction` of the MACs (FLOPs = 2 x MACs, so the same share)."""

    figure: ClassVar[str] = "macs"
    option: ClassVar[str] = "flops_reduction"
    noun: ClassVar[str] = "FLOPs"


@dataclass(frozen=True)
class ParamsReduction(_Reduction):
    """Remove at least `fraction` of the parameters."""

    figure: ClassVar[str] = "params"
    option: ClassVar[str] = "params_reduction"
    noun: ClassVar[str] = "parameters"


@dataclass(frozen=True)
class LatencyBudget:
    """Predicted latency on `target` at most `ms` milliseconds.

    The prediction is the target profile's roofline (devices/estimate.py) applied to the
    PyTorch model's per-layer cost at `threads` threads (default: the profile's own). With
    `measured_dense_ms`, a measurement of the unpruned model on the target at those threads,
    the roofline is scaled so that it predicts exactly that for the dense model. `precision`
    is the precision the shipped file computes in ('int8' files use the profile's int8
    efficiency)."""

    ms: float
    target: TargetProfile = field(default_factory=default_target)
    threads: int | None = None
    measured_dense_ms: float | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.ms <= 0:
            raise EdgepruneError(f"latency budget {self.ms} ms must be positive")
        if self.measured_dense_ms is not None and self.measured_dense_ms <= 0:
            raise EdgepruneError("measured_dense_ms must be positive")

    def met(self, before: Figures, after: Figures) -> bool:
        return after.latency_ms is not None and after.latency_ms <= self.ms

    def describe(self) -> str:
        return f"<= {self.ms:g} ms on {self.target.name} ({self.precision})"

    def shortfall(self, before: Figures, best: Figures) -> str:
        return (f"the smallest model this policy allows is predicted at {best.latency_ms:.2f} "
                f"ms, above the {self.ms:g} ms budget")


@dataclass(frozen=True)
class LayerRatios:
    """Prune each named layer's group by its own ratio (share of channels removed); layers
    not named are left as they are. No search: one pass."""

    ratios: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ratios:
            raise EdgepruneError("layer ratios are empty")
        for name, ratio in self.ratios.items():
            if not 0.0 <= ratio < 1.0:
                raise EdgepruneError(f"ratio {ratio} for layer {name!r} must be in [0, 1)")

    def describe(self) -> str:
        return f"per-layer ratios for {len(self.ratios)} layers"


SearchedGoal = FlopsReduction | ParamsReduction | LatencyBudget
Goal = SearchedGoal | LayerRatios


def parse_layer_ratios(text: str) -> dict[str, float]:
    """'features.0=0.5,features.3=0.25' -> {'features.0': 0.5, 'features.3': 0.25}."""
    ratios: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            ratios[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise EdgepruneError(f"layer ratio {part!r} is not NAME=RATIO (e.g. layer1.0.conv1"
                                 "=0.5)")
    return ratios
