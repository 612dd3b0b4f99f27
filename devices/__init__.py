"""Target device profiles, the standalone on-device runner and the backends that run it.

`runner.py` is deliberately not imported here: it is a script copied to devices, needing only
the standard library, numpy and one runtime.
"""

from edgeprune.devices.bench import (
    BACKENDS,
    Backend,
    BenchOptions,
    BenchResult,
    LocalBackend,
    bench_local,
    get_backend,
)
from edgeprune.devices.targets import TargetProfile, list_targets, load_target

__all__ = [
    "BACKENDS", "Backend", "BenchOptions", "BenchResult", "LocalBackend", "TargetProfile",
    "bench_local", "get_backend", "list_targets", "load_target",
]
