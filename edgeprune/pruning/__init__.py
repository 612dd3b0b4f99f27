"""Structured pruning: criterion scores plus a target in, a smaller `nn.Module` out, with
Torch-Pruning's dependency graph doing the surgery."""

from edgeprune.pruning.importance import PrecomputedImportance
from edgeprune.pruning.oneshot import Policy, PruneResult, prune, prune_at_ratio

__all__ = ["Policy", "PrecomputedImportance", "PruneResult", "prune", "prune_at_ratio"]
