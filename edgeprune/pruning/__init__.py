"""Structured pruning: criterion scores plus a goal in, a smaller `nn.Module` out, with
Torch-Pruning's dependency graph doing the surgery.

Goals: `FlopsReduction`, `ParamsReduction`, `LatencyBudget` (a target's roofline, optionally
calibrated by a measurement) and `LayerRatios`; schedules: `OneShot`, `Iterative`,
`LayerByLayer`; optional kernel re-estimation (`Reestimate`).
"""

from edgeprune.pruning.api import LatencyReport, PruneResult, prune
from edgeprune.pruning.goals import (
    Figures,
    FlopsReduction,
    Goal,
    LatencyBudget,
    LayerRatios,
    ParamsReduction,
    parse_layer_ratios,
)
from edgeprune.pruning.importance import PrecomputedImportance
from edgeprune.pruning.latency import LatencyModel, model_cost
from edgeprune.pruning.reestimate import Reestimate, Refit, reestimate_kernels
from edgeprune.pruning.schedule import Iterative, LayerByLayer, OneShot, StepInfo
from edgeprune.pruning.surgery import Policy, prune_at_ratio

__all__ = [
    "Figures", "FlopsReduction", "Goal", "Iterative", "LatencyBudget", "LatencyModel",
    "LatencyReport", "LayerByLayer", "LayerRatios", "OneShot", "ParamsReduction", "Policy",
    "PrecomputedImportance", "PruneResult", "Reestimate", "Refit", "StepInfo", "model_cost",
    "parse_layer_ratios", "prune", "prune_at_ratio", "reestimate_kernels",
]
