"""Pruning criteria: one class per method, a registry, and `get_criterion(name, **options)`.

Importing this package registers the built-in criteria: the interpretability criteria
(actmax, lrp, function, fmcluster, concept) and the baselines (l1, l2, fpgm, taylor, hrank,
gradient, act-taylor, random).
"""

from edgeprune.criteria import (  # noqa: F401  (register the built-ins)
    actmax,
    concept,
    fmcluster,
    fpgm,
    function,
    gradient,
    hrank,
    lrp,
    magnitude,
    taylor,
)
from edgeprune.criteria.base import (
    CRITERIA,
    Criterion,
    across_processes,
    get_criterion,
    list_criteria,
)

__all__ = ["CRITERIA", "Criterion", "across_processes", "get_criterion", "list_criteria"]
