"""edgeprune: interpretability-based pruning and edge deployment for PyTorch image classifiers."""

from edgeprune.errors import EdgepruneError

__version__ = "0.1.0"
__all__ = ["EdgepruneError", "__version__"]
