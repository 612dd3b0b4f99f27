"""Pruning criteria: one class per method, a registry, and `get_criterion(name, **options)`.

Importing this package registers the built-in criteria (l1, l2, random, lrp).
"""

from edgeprune.criteria import lrp, magnitude  # noqa: F401  (register the built-ins)
from edgeprune.criteria.base import (
    CRITERIA,
    Criterion,
    get_criterion,
    list_criteria,
    register_criterion,
)

__all__ = ["CRITERIA", "Criterion", "get_criterion", "list_criteria", "register_criterion"]
